"""The documentation keeps working: every command in README.md and docs/ is checked, and the
generated configuration reference lists exactly the keys of the schema.

Which commands: every line of a fenced `bash`/`sh`/`shell` block (backslash continuations joined,
`&&`, `;` and `|` separating commands, leading `VAR=value` assignments applied as environment, a
`$(...)` substitution taken as a value).
- `thaw-train ...`: composed with Hydra's compose API on conf/ exactly as `thaw-train` composes it
  (a multirun's sweep overrides left to the sweeper, with the Hydra config), then its values
  checked by thaw's own checks (`thaw.config.checks.validate`, data folders not scanned, a weights
  file path replaced by an existing file: the files are the reader's). A multirun with the thaw
  sweeper also builds its search space, sampler and pruner as the sweeper does.
- `thaw-report/-predict/-evaluate/-export/-retrain/-dashboard ...`: every `--option` it gives is
  one its `--help` lists; thaw-retrain's Hydra overrides compose onto the train config;
  `thaw-X --help` itself is run and must exit 0.
- `python benchmarks/NAME.py ...`: the script exists and defines every `--option` it gives.
- Anything else is not thaw's and is not checked: installers and environments (`python3 -m venv`,
  `.`, `pip`), the test, lint and site tools CI runs itself (`python -m pytest`, `ruff`,
  `mkdocs`), other programs (`git`, `ray`, `optuna-dashboard`, `ls`, `tail`).
No TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    ROOT / "experiments" / "README.md",
]
THAW_COMMANDS = {
    "thaw-report",
    "thaw-predict",
    "thaw-evaluate",
    "thaw-export",
    "thaw-retrain",
    "thaw-dashboard",
}
NOT_THAW = {"python3", ".", "source", "pip", "git", "ray", "optuna-dashboard", "mkdocs", "ruff"}
NOT_THAW |= {"ls", "tail", "cd", "export", "wandb"}
SEPARATORS = {"&&", "||", ";", "|"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
LAUNCHER_PLUGINS = {  # a launcher's command needs its extra (`dev` installs them all)
    "slurm": "hydra_plugins.hydra_submitit_launcher",
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "ray_cluster": "hydra_plugins.hydra_ray_launcher",
}


@dataclasses.dataclass
class Command:
    page: str
    line: int
    argv: list[str]
    env: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}: {' '.join(self.argv)[:70]}"


def fenced_lines(text: str):
    """(line number, logical line) of every shell block, continuations joined."""
    in_block, pending, start = False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            in_block = not in_block and fence.group(1) in ("bash", "sh", "shell")
            continue
        if not in_block:
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def commands(pages=PAGES) -> list[Command]:
    out = []
    for page in pages:
        rel = page.relative_to(ROOT).as_posix()
        for n, line in fenced_lines(page.read_text()):
            line = re.sub(r"\$\([^()]*\)", "$SUBST", line)  # $(ls ...): a value, not a command
            tokens = shlex.split(line, comments=True)
            segment: list[str] = []
            for token in [*tokens, ";"]:
                if token not in SEPARATORS:
                    segment.append(token)
                    continue
                env = {}
                while segment and ASSIGNMENT.match(segment[0]):
                    key, _, value = segment.pop(0).partition("=")
                    env[key] = value
                if segment:
                    out.append(Command(rel, n, segment, env))
                segment = []
    return out


def kind(cmd: Command) -> str:
    word = cmd.argv[0]
    if word == "thaw-train":
        return "train"
    if word in THAW_COMMANDS:
        return "thaw"
    if word == "python" and len(cmd.argv) > 1 and cmd.argv[1].startswith("benchmarks/"):
        return "benchmark"
    if word in NOT_THAW or (word == "python" and cmd.argv[1:3] == ["-m", "pytest"]):
        return "not thaw"
    return "unknown"


ALL = commands()


def test_every_command_is_checked_or_excluded_by_the_rule():
    unknown = [c.id for c in ALL if kind(c) == "unknown"]
    assert not unknown, f"commands neither checked nor excluded by the module's rule: {unknown}"
    assert sum(kind(c) == "train" for c in ALL) >= 10  # the pages are read: they hold commands


def test_the_readme_shows_the_sweep_on_your_own_photos_on_its_first_screen():
    first = next(
        c.line
        for c in ALL
        if c.page == "README.md"
        and c.argv[:2] == ["thaw-train", "--multirun"]
        and "sweep=depth_lr" in c.argv
        and any(a.startswith("data.path=") for a in c.argv)
    )
    assert first <= 60, first


# ---------------------------------------------------------------------------------- thaw-train


def _compose(overrides: list[str], multirun: bool):
    from conftest import compose_cfg

    from thaw.commands.train import _fixed_overrides

    fixed = _fixed_overrides(overrides) if multirun else overrides
    return compose_cfg(fixed, hydra_config=multirun)


def check_train(cmd: Command, tmp_path: Path, monkeypatch) -> None:
    from hydra._internal.utils import get_args_parser

    from thaw.config.checks import validate

    for key, value in cmd.env.items():
        monkeypatch.setenv(key, value)
    args, unknown = get_args_parser().parse_known_args(cmd.argv[1:])
    assert not unknown, unknown
    launcher = next(
        (o.split("=", 1)[1] for o in args.overrides if o.startswith("hydra/launcher=")), ""
    )
    if launcher in LAUNCHER_PLUGINS:
        pytest.importorskip(LAUNCHER_PLUGINS[launcher], reason=f"hydra/launcher={launcher}")
    cfg = _compose(list(args.overrides), bool(args.multirun))
    run_cfg = cfg
    if args.multirun:
        from thaw.sweeper.identity import without_hydra

        run_cfg = without_hydra(cfg)
    weights = OmegaConf.select(run_cfg, "backbone.weights")
    if weights not in (None, "imagenet"):
        stand_in = tmp_path / "weights.h5"
        stand_in.write_bytes(b"")
        run_cfg.backbone.weights = str(stand_in)
    validate(run_cfg, scan_data=False)
    if args.multirun and "thaw_sweeper" in str(cfg.hydra.sweeper.get("_target_", "")):
        check_sweep(cfg, list(args.overrides))


def check_sweep(cfg, overrides: list[str]) -> None:
    """The search space, sampler and pruner, built as the sweeper builds them."""
    from thaw.commands.train import _fixed_overrides
    from thaw.sweeper import plan as plan_mod
    from thaw.sweeper.study_setup import build_pruner, instantiate, sampler_node

    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    fixed = _fixed_overrides(overrides)
    plan = plan_mod.build(sweeper, cfg, [o for o in overrides if o not in fixed])
    node, _ = sampler_node(sweeper, plan, int(sweeper["n_trials"]))
    assert instantiate(sweeper, "sampler", None, node) is not None
    build_pruner(sweeper)


TRAIN = [c for c in ALL if kind(c) == "train"]


@pytest.mark.parametrize("cmd", TRAIN, ids=[c.id for c in TRAIN])
def test_thaw_train_command_composes(cmd, tmp_path, monkeypatch):
    check_train(cmd, tmp_path, monkeypatch)


def test_a_command_that_no_longer_composes_fails(tmp_path, monkeypatch):
    """The check above is not vacuous: a misspelt key, a missing group option, a bad value and a
    bad search expression each fail it."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from thaw.errors import ThawError

    bad = [
        "thaw-train experiment=tiny trainer.head_epoch=3",
        "thaw-train experiment=tiny backbone=mobilenet_v9",
        "thaw-train experiment=tiny unfreeze.depth=99",
        "thaw-train --multirun experiment=tiny sweep=depth_lr 'lr.base=interval(1e-3)'",
    ]
    for line in bad:
        cmd = Command("test", 0, shlex.split(line), {})
        with pytest.raises((HydraException, OmegaConfBaseException, ThawError, ValueError)):
            check_train(cmd, tmp_path, monkeypatch)


# ----------------------------------------------------------------------- other thaw commands


@cache
def help_text(command: str) -> str:
    exe = Path(sys.executable).with_name(command)
    argv = [str(exe)] if exe.exists() else [command]
    out = subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert out.returncode == 0, (command, out.stdout[-2000:], out.stderr[-2000:])
    return out.stdout


THAW = [c for c in ALL if kind(c) == "thaw"]


@pytest.mark.parametrize("cmd", THAW, ids=[c.id for c in THAW])
def test_thaw_command_options_exist(cmd, tmp_path, monkeypatch):
    text = help_text(cmd.argv[0])
    for option in (a.split("=", 1)[0] for a in cmd.argv[1:] if a.startswith("--")):
        assert re.search(rf"(^|[\s\[,]){re.escape(option)}\b", text), (option, cmd.id)
    if cmd.argv[0] == "thaw-retrain":  # its overrides apply to the train config
        overrides = [a for a in cmd.argv[2:] if "=" in a and not a.startswith("-")]
        check_train(
            Command(cmd.page, cmd.line, ["thaw-train", *overrides], {}), tmp_path, monkeypatch
        )


HELP = [c for c in ALL if kind(c) == "train" and c.argv[1:] == ["--help"]]


@pytest.mark.parametrize("cmd", HELP, ids=[c.id for c in HELP])
def test_thaw_train_help_runs(cmd):
    text = help_text("thaw-train")
    assert "== Configuration groups ==" in text and "experiment: " in text, text[:500]


# ------------------------------------------------------------------------------ benchmarks

BENCH = [c for c in ALL if kind(c) == "benchmark"]


@pytest.mark.parametrize("cmd", BENCH, ids=[c.id for c in BENCH])
def test_benchmark_command_names_a_script_and_its_options(cmd):
    script = ROOT / cmd.argv[1]
    assert script.is_file(), cmd.id
    source = script.read_text()
    for option in (a.split("=", 1)[0] for a in cmd.argv[2:] if a.startswith("--")):
        assert f'"{option}"' in source, (option, cmd.id)


# ------------------------------------------------------------------- configuration reference


def _schema_keys(node, prefix: str = "") -> set[str]:
    """Leaf keys of a structured config, walked with OmegaConf (not with the reference's code)."""
    keys = set()
    for key in node.keys():
        value = node._get_node(key)
        if OmegaConf.is_dict(value) and value._metadata.object_type not in (None, dict):
            keys |= _schema_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def _section_keys(markdown: str, title: str) -> list[str]:
    section = markdown.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \| `", section, re.M)


def test_the_generated_reference_lists_exactly_the_schema_keys():
    from hydra_plugins.thaw_sweeper.thaw_sweeper import ThawSweeperConf
    from thaw.config.reference import SWEEPER_PLUMBING, markdown
    from thaw.config.schema import TrainConfig

    text = markdown()
    train = _section_keys(text, "thaw-train")
    assert len(train) == len(set(train))
    assert set(train) == _schema_keys(OmegaConf.structured(TrainConfig))
    sweeper = _section_keys(text, "The sweeper")
    expected = {
        f"hydra.sweeper.{k}"
        for k in _schema_keys(OmegaConf.structured(ThawSweeperConf))
        if k not in SWEEPER_PLUMBING
    }
    assert set(sweeper) == expected


def test_every_reference_row_has_a_type_a_default_and_a_doc():
    from thaw.config.reference import sweeper_rows, train_rows

    for row in [*train_rows(), *sweeper_rows()]:
        assert row.type and row.doc.strip(), row


def test_the_reference_lists_every_group_option_in_conf():
    from thaw.config.paths import conf_dir, experiments_dir
    from thaw.config.reference import markdown

    text = markdown()
    options = [p for p in conf_dir().rglob("*.yaml") if p.parent != conf_dir()]
    options += list(experiments_dir().glob("*.yaml"))
    for path in options:
        group = (
            "experiment"
            if path.parent == experiments_dir()
            else path.parent.relative_to(conf_dir()).as_posix()
        )
        assert f"| `{group}` | `{path.stem}` |" in text, path


def test_a_reference_default_is_what_a_run_gets():
    """A group's default option sets some keys over the schema (`logger: wandb` in train.yaml, the
    schema's logger.name is `none`): the reference gives the value a run with no overrides has."""
    from conftest import compose_cfg

    from thaw.config.reference import train_rows

    cfg = compose_cfg()
    rows = {r.key: r.default for r in train_rows()}
    assert rows["logger.name"] == "wandb" == cfg.logger.name.value
    for key, default in rows.items():
        if isinstance(default, str) and "${" in default:
            continue  # an interpolation is shown as written: its value depends on other keys
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        assert default == getattr(value, "value", value), key


def test_the_reference_follows_the_schema(monkeypatch):
    """A key added to the schema appears in the reference with its default and its comment."""
    from thaw.config import reference, schema

    @dataclasses.dataclass
    class Extra(schema.TrainConfig):
        new_key: int = 7  # the doc of a key added later

    monkeypatch.setattr(schema, "TrainConfig", Extra)
    try:
        row = next(r for r in reference.train_rows() if r.key == "new_key")
    finally:
        monkeypatch.undo()
        schema.register_configs()  # Hydra's ConfigStore holds the schema it composed with
    assert (row.type, row.default, row.doc) == ("int", 7, "the doc of a key added later")


# ------------------------------------------------------------------- files the pages name

NAMING_PAGES = [
    *PAGES,
    ROOT / "CHANGELOG.md",
    ROOT / "experiments" / "README.md",
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "conf").rglob("*.yaml")),
    *sorted((ROOT / "experiments").glob("*.yaml")),
]
RAW_FILE = re.compile(r"(?<![\w-])([a-z_]+-\d{4}-\d{2}-\d{2}[\w.-]*?\.jsonl)")


def test_every_test_file_and_raw_result_a_page_names_exists():
    """A claim cites its test (`tests/.../test_x.py`) or its raw result (`name-date.jsonl`); a file
    moved or renamed leaves the citation pointing nowhere."""
    results = {p.name for p in (ROOT / "benchmarks" / "results").iterdir()}
    missing = []
    for page in NAMING_PAGES:
        text, rel = page.read_text(), page.relative_to(ROOT).as_posix()
        missing += [
            f"{rel}: {m}" for m in re.findall(r"tests/[\w/]+\.py", text) if not (ROOT / m).is_file()
        ]
        missing += [f"{rel}: {m}" for m in RAW_FILE.findall(text) if m not in results]
    assert not missing, missing


def _first_run_outputs() -> dict[str, str]:
    """{page: the objective line it shows after `thaw-train experiment=smoke`}."""
    out = {}
    for page in PAGES:
        text = page.read_text()
        shown = re.findall(r"^objective val_accuracy = (\S+)$", text, re.M)
        if shown and "thaw-train experiment=smoke\n" in text:
            out[page.relative_to(ROOT).as_posix()] = shown
    return out


def test_every_page_shows_the_first_run_figure_measured_last():
    """The first run's figure a page shows is the newest measured one for the default seed
    (benchmarks/results/smoke_seeds-*.jsonl), on every page that shows it."""
    import json

    raw = sorted((ROOT / "benchmarks" / "results").glob("smoke_seeds-*.jsonl"))[-1]
    rows = [json.loads(line) for line in raw.read_text().splitlines() if line.strip()]
    default_seed = OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml").seed
    [measured] = {r["val_accuracy"] for r in rows if r["seed"] == default_seed}
    shown = _first_run_outputs()
    assert {"README.md", "docs/getting-started.md"} <= set(shown), shown
    for page, figures in shown.items():
        assert [float(f) for f in figures] == [measured], (page, figures, raw.name)
