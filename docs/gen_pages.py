"""Pages generated at build time (mkdocs-gen-files): the configuration reference, from the code,
and the benchmarks page, from benchmarks/README.md; neither is a copy in docs/ that could drift."""

from pathlib import Path

import mkdocs_gen_files

from thaw.config.reference import markdown

ROOT = Path(__file__).resolve().parents[1]

with mkdocs_gen_files.open("reference/config.md", "w") as f:
    f.write(markdown())
mkdocs_gen_files.set_edit_path("reference/config.md", "../src/thaw/config/reference.py")

with mkdocs_gen_files.open("benchmarks.md", "w") as f:
    f.write((ROOT / "benchmarks" / "README.md").read_text())
