"""`thaw-train`: the Hydra application. Config errors are caught before TensorFlow is imported."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from thaw.commands.sweep_hooks import ThawTrainSweep
from thaw.config.checks import validate
from thaw.config.paths import conf_dir
from thaw.config.schema import register_configs
from thaw.errors import ThawError
from thaw.train.workspace import Workspace

log = logging.getLogger("thaw")

register_configs()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text.split("Config search path")[0]
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += ": " + str(cause).strip().split("\n    full_key")[0]
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.strip().startswith(("reference_type=", "object_type="))
    ]
    from thaw.runtime.secrets import (
        redact,
    )  # e.g. Hydra quoting a bad override: never a storage password

    return redact("; ".join(lines).replace(":; ", ": "))[:600]


def _die(message: str) -> None:
    print(f"thaw-train: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _fixed_overrides(overrides: list[str]) -> list[str]:
    """Drop sweep overrides (a=1,2 / choice(...)) so the fixed part can be composed and checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def precheck(argv: list[str], data_state=None) -> None:
    """Compose the config exactly as Hydra will and validate it; exit 2 with one line on bad
    input. With `data_state` (the Workspace's) the runs that follow reuse the folder scan."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if (
        args.help
        or args.hydra_help
        or args.cfg
        or args.info
        or args.shell_completion
        or args.experimental_rerun
        or args.config_path
    ):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        overrides = _fixed_overrides(args.overrides) if args.multirun else list(args.overrides)
        if args.config_dir:  # the user's own group options and experiments, checked the same way
            searchpath = f"file://{os.path.abspath(args.config_dir)}"
            overrides = [f"hydra.searchpath=[{searchpath}]", *overrides]
        with initialize_config_dir(
            config_dir=str(conf_dir()), version_base="1.3", job_name="train"
        ):
            cfg = compose(
                config_name=args.config_name or "train",
                overrides=overrides,
                return_hydra_config=bool(args.multirun),
            )
        thaw_sweep = args.multirun and "thaw_sweeper" in str(cfg.hydra.sweeper.get("_target_", ""))
        hydra_node = cfg.hydra if thaw_sweep else None
        if args.multirun:
            from thaw.sweeper.identity import without_hydra

            cfg = without_hydra(cfg)
        # thaw's sweeper scans the data after checking its study
        validate(cfg, scan_data=not thaw_sweep, data_state=data_state)
    except ThawError as exc:
        _die(_one_line(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        _die(_one_line(_no_such_setting(exc) or exc))
    _warn_ignored(cfg, overrides, hydra_node)


def _no_such_setting(exc: BaseException) -> ThawError | None:
    """Hydra's line for an override of a key the config lacks ends "To append to your config use
    +key=value": for thaw's settings that would change nothing, so name the nearest setting."""
    import re

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from thaw.config.keys import not_a_setting
    from thaw.errors import ConfigError

    found = re.match(r"Could not override '([^']+)'", str(exc))
    if not found or not isinstance(exc.__cause__, (ConfigAttributeError, ConfigKeyError)):
        return None
    key = found.group(1)
    if key.startswith("hydra.sweeper.") and "BasicSweeperConf" in str(exc.__cause__):
        return ConfigError(
            f"{key}: no such setting without thaw's sweeper (a single run, or Hydra's basic "
            "sweeper); sweep=depth_lr or sweep=finetune brings it"
        )
    return None if key.startswith("hydra.") else not_a_setting(key)


def _warn_ignored(cfg, overrides: list[str], hydra_node=None) -> None:
    """A key given on the command line that this config ignores: one warning line naming it and why
    (a sweep that searches such a key is refused by the sweeper instead). With a thaw sweep's
    `hydra_node`, its sweeper settings too."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from thaw.config.checks import ignored, inert_sweeper_keys

    keys = [
        o.get_key_element().lstrip("+~")
        for o in OverridesParser.create().parse_overrides(overrides)
    ]
    found = ignored(cfg, keys)
    if hydra_node is not None:
        found.update({k: v for k, v in inert_sweeper_keys(hydra_node).items() if k in keys})
    for key, why in found.items():
        print(
            f"thaw-train: warning: {key} changes nothing here: {why}", file=sys.stderr, flush=True
        )


def _remove_if_only_hydra_files(out: Path) -> None:
    """A run that failed on bad input leaves nothing behind (only Hydra's own files were
    written)."""
    try:
        names = {p.name for p in out.iterdir()}
    except OSError:
        return
    if names <= {".hydra", "train.log", "resolved_config.yaml"}:
        shutil.rmtree(out, ignore_errors=True)


def _describe_time(trial, out: Path) -> None:
    """The run's time breakdown on its trial, for the sweep log and report (before the trial is
    told)."""
    import json

    try:
        trial.describe(
            time_breakdown=json.loads((out / "metrics.json").read_text()).get("time_breakdown")
        )
    except (OSError, ValueError):
        pass


def _prepare_trial(cfg, trial, out: Path, workspace: Workspace) -> None:
    """Before training: the config checked and saved resolved (thaw-evaluate, -export and -retrain
    read the same data and weights from any directory), what the sweep report reads put on the
    trial, and a retried trial given the dead trial's checkpoint to continue."""
    validate(cfg, data_state=workspace.data)
    _save_resolved_config(cfg, out)
    if trial is not None:
        from thaw.train import checkpoint
        from thaw.train.record import objective_names

        trial.describe(
            head_epochs=int(cfg.trainer.head_epochs), objective_name=objective_names(cfg)[0]
        )
        source = trial.retried_run_dir() if cfg.trainer.resume == "auto" else None
        if checkpoint.adopt(source, out):
            log.info(
                "trial %d retries a dead trial: continuing its checkpoint from %s",
                trial.number,
                source,
            )


def _save_resolved_config(cfg, out: Path) -> None:
    from omegaconf import OmegaConf

    from thaw.commands.sweep_hooks import resolved
    from thaw.model.inference import RESOLVED_CONFIG
    from thaw.runtime.outputs import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out / RESOLVED_CONFIG,
        "# this run's config: interpolations resolved, paths absolute\n"
        + OmegaConf.to_yaml(resolved(cfg)),
    )


def _failed(trial, exc: BaseException, prefix: str = "") -> dict:
    """Tell the trial (if any) why the run failed; the summary W&B gets."""
    message = f"{prefix}{_one_line(exc)}"
    if trial is not None:
        trial.fail(message)
    return {"error": message}


def run(cfg: DictConfig, workspace: Workspace):
    """The Hydra task: train one configuration in this process's Workspace, return its objective
    for the sweeper."""
    from hydra.core.hydra_config import HydraConfig

    from thaw.sweeper.trial import attach_trial

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.output_subdir:  # Hydra copied the command line there, a storage URL's password included
        from thaw.runtime.secrets import redact_files

        redact_files(out / hc.output_subdir)
    trial = attach_trial(hc)
    started: list = []  # the tracker, once train() has loaded the data and built the model
    outcome: list = ["FAIL", {}]  # the run's state and summary, as the tracker is told them
    try:
        result = _attempt(cfg, hc, trial, out, workspace, started, outcome)
    finally:
        _wind_up(cfg, trial, out, workspace, started, *outcome)
    if result is None:  # pruned
        return None
    _complete(trial, out, result)
    return result.objective


def _attempt(cfg, hc, trial, out: Path, workspace: Workspace, started: list, outcome: list):
    """Train (None when pruned). A failure is told to the trial and re-raised, bad input outside a
    sweep exits 2 instead; `outcome` gets the state and summary the tracker will be told."""
    from hydra.types import RunMode

    try:
        result = _train(cfg, trial, out, workspace, started, outcome)
    except ThawError as exc:
        outcome[1] = _failed(trial, exc)
        if hc.mode != RunMode.MULTIRUN:
            logging.shutdown()
            _remove_if_only_hydra_files(out)
            _die(outcome[1]["error"])
        raise
    except KeyboardInterrupt:
        outcome[1] = {"error": "interrupted"}
        if trial is not None:
            trial.interrupt("interrupted (SIGINT/SIGTERM)")
        raise
    except SystemExit:  # submitit's preemption/timeout exit: the requeued job continues this trial
        outcome[1] = {"error": "exited (requeued by the launcher?)"}
        raise
    except BaseException as exc:
        outcome[1] = _failed(trial, exc, f"{type(exc).__name__}: ")
        log.error("run failed: %s", outcome[1]["error"])
        raise
    if result is not None:
        outcome[0] = "COMPLETE"
        outcome[1] = _summary(result)
    return result


def _train(cfg, trial, out: Path, workspace: Workspace, started: list, outcome: list):
    """The trial prepared and trained; a pruned trial is told so and gives None."""
    _prepare_trial(cfg, trial, out, workspace)
    from thaw.runtime import tracking
    from thaw.train.recipe import Pruned, train

    def start_tracker():  # W&B starts only for a run that got past bad input (no orphan run)
        started.append(tracking.start(cfg, out, trial))
        return started[0]

    try:
        return train(cfg, out, reporter=trial, tracker=start_tracker, workspace=workspace)
    except Pruned as exc:
        log.info("trial pruned: %s", exc)
        outcome[:] = ["PRUNED", {"pruned": str(exc)}]
        if trial is not None:
            _describe_time(trial, out)
            trial.prune(str(exc))
        return None


_SUMMARY_KEYS = (
    "objective",
    "val_accuracy",
    "val_loss",
    "best_epoch",
    "test_accuracy",
    "wall_seconds",
)


def _summary(result) -> dict:
    """The finished run's headline metrics, for the tracker's summary."""
    return {k: result.metrics.get(k) for k in _SUMMARY_KEYS if result.metrics.get(k) is not None}


def _wind_up(
    cfg, trial, out: Path, workspace: Workspace, started: list, state: str, summary: dict
) -> None:
    """Whatever the outcome: the trial closed, the tracker finished, this trial's graphs
    released."""
    if trial is not None:
        trial.close()
    if started:
        log_model = cfg.logger.get("log_model") and state == "COMPLETE"
        started[0].finish(summary, state, out / "model.keras" if log_model else None)
    workspace.end_run(bool(cfg.trainer.get("reuse_compiled", True)), failed=state == "FAIL")


def _complete(trial, out: Path, result) -> None:
    """The trial told its objective (and time breakdown); the objective logged and printed."""
    if trial is not None:
        trial.describe(
            time_breakdown=result.metrics.get("time_breakdown"),
            kept_phase=result.metrics.get("kept_phase"),
        )
        trial.complete(result.objective, out)
    log.info(
        "objective %s = %s  (run dir %s)", result.metrics["objective_name"], result.objective, out
    )
    print(f"objective {result.metrics['objective_name']} = {result.objective}", flush=True)


def hydra_app(workspace: Workspace):
    """The Hydra application over one Workspace: every run this process trains (an in-process
    sweep's trials) shares it; a launcher's worker process gets its own (Workspace.__reduce__)."""

    def task(cfg: DictConfig):
        return run(cfg, workspace)

    task.sweep_app = ThawTrainSweep()  # what the sweeper asks the app: identity, baseline, test
    return hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(task)


def main() -> None:
    from thaw.runtime import interrupt

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workspace = Workspace()  # what this process keeps between the runs it trains
    precheck(sys.argv[1:], workspace.data)
    # the tests' fault injection (off unless THAW_TEST_FAULTS=1): a bad value stops here, not
    # mid-run
    try:
        from thaw.train.checkpoint import kill_point

        kill_point()
    except ThawError as exc:
        _die(_one_line(exc))
    interrupt.install()
    try:
        hydra_app(workspace)()
    except KeyboardInterrupt:
        print("thaw-train: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
