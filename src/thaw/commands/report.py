"""thaw-report: write report.html (and its PNGs) for a sweep, from its dir, journal file or storage
URL."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from thaw.errors import ThawError
from thaw.report.html import build_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="thaw-report", description="Write report.html for a sweep."
    )
    parser.add_argument(
        "target",
        help="sweep dir (with study.db), a journal file (.log/.journal/.jsonl, "
        "journal:///path) or an Optuna storage URL",
    )
    parser.add_argument(
        "--study", default=None, help="study name (needed when the storage holds several)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output dir (default: the sweep dir, the journal's dir, or . for a URL)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build_report(args.target, args.study, Path(args.out) if args.out else None)
    except ThawError as exc:
        print(f"thaw-report: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
