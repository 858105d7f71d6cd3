"""The sweep-summary W&B run (job_type sweep-summary): every trial in a table, the report as an
artifact (report.html and its PNGs), the best trial and, once confirmation exists, the verdict (the
winner against the frozen base, in words). Its id comes from the study, so a sweep resumed and
finished again updates the same run."""

from __future__ import annotations

import logging
from pathlib import Path

from thaw.errors import first_line
from thaw.runtime.tracking import _argv_redacted, _settings, resolve_mode, run_id

log = logging.getLogger(__name__)


def log_sweep_summary(logger_cfg, study, sweep_dir: Path, storage_url: str | None = None) -> None:
    """One more W&B run beside the trials' (best effort: a warning when it cannot)."""
    if logger_cfg is None or logger_cfg.get("name") != "wandb":
        return
    mode = resolve_mode(logger_cfg.get("mode", "auto"))
    if mode == "disabled":
        return
    try:
        run = _init(logger_cfg, study, Path(sweep_dir), storage_url, mode)
    except Exception as exc:
        log.warning("W&B sweep summary not logged: %s", first_line(exc))
        return
    try:
        import wandb

        images = {
            f"plots/{p.stem}": wandb.Image(str(p))
            for p in sorted((Path(sweep_dir) / "report_png").glob("*.png"))
        }
        run.log({"trials": trials_table(wandb, study), **images})
        _log_report(wandb, run, study, Path(sweep_dir))
        summarise_best(run, study)
    except Exception as exc:
        log.warning("W&B sweep summary incomplete: %s", exc)
    finally:
        try:
            with _argv_redacted():
                run.finish()
        except Exception:
            pass


def _init(logger_cfg, study, sweep_dir: Path, storage_url: str | None, mode: str):
    import wandb

    from thaw.runtime.secrets import redact

    name = study.study_name
    with _argv_redacted():
        return wandb.init(
            project=logger_cfg.get("project", "thaw"),
            entity=logger_cfg.get("entity"),
            group=logger_cfg.get("group") or name,
            job_type="sweep-summary",
            name=f"{name}-summary",
            id=run_id(name, "summary"),
            resume="allow",
            tags=[*(logger_cfg.get("tags") or []), "sweep-summary", name[:64]],
            config={
                "study": {"name": name, "storage": redact(storage_url) if storage_url else None},
                "sweep_dir": str(sweep_dir),
                "about": study.user_attrs.get("about") or {},
            },
            dir=str(sweep_dir),
            mode=mode,
            reinit="finish_previous",
            settings=_settings(wandb, logger_cfg.get("init_timeout", 30)),
        )


def _log_report(wandb, run, study, sweep_dir: Path) -> None:
    """report.html and report_png/ as one artifact (type report), when the report was written."""
    page = sweep_dir / "report.html"
    if not page.is_file():
        return
    art = wandb.Artifact(f"report-{run.id}", type="report", metadata={"study": study.study_name})
    art.add_file(str(page))
    if (sweep_dir / "report_png").is_dir():
        art.add_dir(str(sweep_dir / "report_png"), name="report_png")
    run.log_artifact(art)


def trials_table(wandb, study):
    """Every trial: number, state, value, its parameters and run directory."""
    params = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    table = wandb.Table(columns=["number", "state", "value", *params, "run_dir"])
    for t in study.get_trials(deepcopy=False):
        value = t.values[0] if t.values and len(t.values) == 1 else None
        table.add_data(
            t.number,
            t.state.name,
            value,
            *[t.params.get(p) for p in params],
            t.user_attrs.get("run_dir", ""),
        )
    return table


def summarise_best(run, study) -> None:
    """The trial the sweep answers with (its confirmed winner, as optimization_results.yaml and
    the report name it; the search's best beside it where they differ) and, when confirmed, the
    verdict on the run's summary; a study without a finished trial has no best."""
    from thaw.runtime.chosen_trial import chosen_trial

    if study.user_attrs.get("verdict"):  # the confirmed winner against the baseline, in words
        run.summary.update({"verdict": study.user_attrs["verdict"]})
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    run.summary.update({"trials": counts})
    best = chosen_trial(study)
    if best is None:
        return
    run.summary.update(
        {"best_value": best.value, "best_params": best.params, "best_trial": best.number}
    )
    if best.number != study.best_trial.number:
        run.summary.update(
            {"search_best_trial": study.best_trial.number, "search_best_value": study.best_value}
        )
