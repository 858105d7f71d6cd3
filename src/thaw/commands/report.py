"""thaw-report: write report.html (and its PNGs) for a sweep, from its dir, journal file or storage
URL; with several sweeps, compare.html: them side by side."""

from __future__ import annotations

import argparse
import logging
import sys

from thaw.errors import ThawError
from thaw.report.html import build_report
from thaw.runtime.outputs import output_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="thaw-report",
        description="Write report.html for a sweep, or compare.html for several side by side.",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="target",
        help="sweep dir (with study.db), a journal file (.log/.journal/.jsonl, "
        "journal:///path) or an Optuna storage URL; several: compared side by side",
    )
    parser.add_argument(
        "--study", default=None, help="study name (needed when the storage holds several)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output dir (default: the sweep dir, the journal's dir, or . for a URL or for "
        "several sweeps)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = output_dir(args.out) if args.out else None
        if len(args.targets) == 1:
            path = build_report(args.targets[0], args.study, out)
        elif args.study is not None:
            parser.error("--study: only with one target (each compared sweep holds one study)")
        else:
            from thaw.report.compare import build_comparison

            path = build_comparison(args.targets, out)
    except ThawError as exc:
        print(f"thaw-report: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
