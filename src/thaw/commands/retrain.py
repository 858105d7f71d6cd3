"""`thaw-retrain`: run a sweep's winner (or any run) again from the exact config it ran with.

The run's own `resolved_config.yaml` (what ran, paths absolute, even if conf/ changed since; an
older run's `.hydra/config.yaml`) is applied on top of
thaw's schema as a `# @package _global_` config (`+retrain=winner`, from a temporary search-path
entry), so types are still checked and keys added to thaw since keep their defaults. Command-line
overrides come last (more epochs, `--train-on-val`). The new run goes to
`<sweep or run dir>/retrain_<trial>` unless `hydra.run.dir=` says otherwise, saves its model and, as
a single run, evaluates the held-out test split once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from thaw.errors import ConfigError
from thaw.model.inference import (
    RESOLVED_CONFIG,
    best_trial_dir,
    run_command,
    run_config,
    run_config_file,
)

TRAIN_ON_VAL = ["data.train_on_val=true", "trainer.restore_best=false", "trainer.patience=0"]


def source_run(target: str) -> Path:
    p = Path(target).expanduser()
    run = best_trial_dir(p) if (p / "optimization_results.yaml").is_file() else p
    if not (run / RESOLVED_CONFIG).is_file() and not (run / ".hydra" / "config.yaml").is_file():
        raise ConfigError(
            f"{target}: not a sweep dir or run dir (no {run / RESOLVED_CONFIG} or "
            f"{run / '.hydra' / 'config.yaml'})"
        )
    return run


def write_winner(run: Path, search_dir: Path) -> None:
    """The run's config as an optional `retrain` group entry that overrides every key: its resolved
    copy (paths absolute, so the winner finds its data from any directory) where the run has one.
    Read and checked first: a damaged file is named, not the temporary copy."""
    run_config(run)
    text = run_config_file(run).read_text()
    (search_dir / "retrain").mkdir(parents=True, exist_ok=True)
    (search_dir / "retrain" / "winner.yaml").write_text(
        f"# @package _global_\n# from {run}\n{text}"
    )


def _unused(parent: Path, name: str) -> Path:
    """retrain_<name>, or retrain_<name>-2, -3, ... where an earlier retrain finished there (its
    metrics.json and no checkpoint): a second retrain never overwrites the first. A retrain that
    was killed (its checkpoint is there) is continued."""
    from thaw.train.checkpoint import NAME

    out, n = parent / f"retrain_{name}", 1
    while (out / "metrics.json").is_file() and not (out / NAME).is_file():
        n += 1
        out = parent / f"retrain_{name}-{n}"
    return out


def _refuse_group_overrides(overrides: list[str]) -> None:
    """The winner's config sets every key after the config groups compose, so `data=folder` would
    be silently undone: only dotted keys are overrides here."""
    from thaw.config.paths import conf_dir

    groups = {p.name for p in conf_dir().iterdir() if p.is_dir()} | {"experiment", "sweep"}
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if "=" in o and "." not in key and key in groups:
            raise ConfigError(
                f"{o}: thaw-retrain re-runs the winner's exact config, so a config group "
                f"cannot be swapped; override its keys instead (e.g. {key}.<key>=...)"
            )


def retrain_argv(
    target: str, overrides: list[str], train_on_val: bool, search_dir: Path
) -> list[str]:
    """thaw-train's command line for the re-run (writes the winner's config under search_dir)."""
    run = source_run(target)
    write_winner(run, search_dir)
    base = Path(target).expanduser().resolve()
    default_dir = _unused((base if base != run.resolve() else run.resolve().parent), run.name)
    _refuse_group_overrides(overrides)
    extra = list(overrides) + (TRAIN_ON_VAL if train_on_val else [])
    if not any(o.startswith("hydra.run.dir=") for o in extra):
        extra.append(f"hydra.run.dir={default_dir}")
    return [
        f"hydra.searchpath=[file://{search_dir.resolve()}]",
        "+retrain=winner",
        "trainer.save_model=true",
        *extra,
    ]


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="thaw-retrain",
        description=(
            "Re-run a sweep's best trial (or a run) from its exact saved config, with overrides."
        ),
        epilog="e.g. thaw-retrain multirun/smoke/2026-11-29_10-00-00 trainer.finetune_epochs=20 "
        "--train-on-val",
    )
    parser.add_argument("target", help="sweep dir (its best trial) or run dir")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. trainer.finetune_epochs=20"
    )
    parser.add_argument(
        "--train-on-val",
        action="store_true",
        help="train on train + validation (" + " ".join(TRAIN_ON_VAL) + ")",
    )
    args = parser.parse_intermixed_args(argv)
    from thaw.commands import train as cli

    with tempfile.TemporaryDirectory(prefix="thaw-retrain-") as tmp:
        new_argv = retrain_argv(args.target, args.overrides, args.train_on_val, Path(tmp))
        from thaw.runtime.secrets import (
            redact,
        )  # a storage URL among the overrides: no password echoed

        print(
            "thaw-retrain: thaw-train " + redact(" ".join(new_argv[1:])),
            file=sys.stderr,
            flush=True,
        )
        sys.argv = ["thaw-train", *new_argv]
        cli.main()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(
        "thaw-retrain", lambda: _main(argv), per_file_logs=True
    )  # a training run logs as usual


if __name__ == "__main__":
    sys.exit(main())
