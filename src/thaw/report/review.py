"""The review questions a report answers in words and tables, before its plots: what the sweep was
about (data, backbone, weights, image size, search space, sampler, pruner, trials by state), how
much compute pruning and the feature cache saved, and why failed trials failed.

Read from the study (its `about` attribute, recorded by thaw-train sweeps) and each trial's run dir
(metrics.json, and the Hydra config where the study predates `about`'s sampler and pruner)."""

from __future__ import annotations

import html
import json
import statistics
from collections import Counter
from pathlib import Path

import yaml

from thaw.sweeper import oom
from thaw.sweeper.failures import is_surplus

esc = html.escape


def run_dir(trial, study=None) -> Path | None:
    """A trial's run dir: inside the sweep dir the report was asked for when it is there (a copied
    or moved sweep reads its own files), else where the trial recorded it."""
    return local_run_dir(trial.user_attrs.get("run_dir"), getattr(study, "thaw_sweep_dir", None))


def local_run_dir(recorded, sweep_dir) -> Path | None:
    if not recorded:
        return None
    if sweep_dir is not None and (Path(sweep_dir) / Path(recorded).name).is_dir():
        return Path(sweep_dir) / Path(recorded).name
    return Path(recorded)


def records(study) -> dict[int, dict]:
    """{trial number: its metrics.json} for the trials whose run dir holds one."""
    out = {}
    for t in study.get_trials(deepcopy=False):
        try:
            out[t.number] = json.loads((run_dir(t, study) / "metrics.json").read_text())
        except (OSError, ValueError, TypeError):
            continue
    return out


def _hydra_sweeper(study) -> dict:
    """The sweeper's settings from a trial's .hydra/hydra.yaml (sweeps made before `about` named
    the sampler and pruner)."""
    for t in study.get_trials(deepcopy=False):
        try:
            text = (run_dir(t, study) / ".hydra" / "hydra.yaml").read_text()
            return (yaml.safe_load(text) or {}).get("hydra", {}).get("sweeper") or {}
        except (OSError, TypeError, yaml.YAMLError, AttributeError):
            continue
    return {}


def component(node) -> str:
    """'TPESampler(seed=1234, n_startup_trials=5)' from a Hydra `_target_` node."""
    if not isinstance(node, dict) or "_target_" not in node:
        return "?" if node is None else str(node)
    args = ", ".join(f"{k}={v}" for k, v in node.items() if k != "_target_")
    return f"{str(node['_target_']).rsplit('.', 1)[-1]}({args})"


def header_facts(study) -> list[tuple[str, str]]:
    """(label, value) pairs naming what the sweep was about, in the header's order."""
    about = dict(study.user_attrs.get("about") or {})
    sweeper = _hydra_sweeper(study) if not ("sampler" in about and "pruner" in about) else {}
    images = about.get("images") or {}
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials if not is_surplus(t))
    surplus = sum(1 for t in trials if is_surplus(t))
    counts_txt = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"
    if surplus:
        counts_txt += f"; {surplus} surplus, never run (another worker took the last slot)"
    facts = [("data", str(about.get("data", "?")))]
    if images:
        facts.append(
            (
                "images",
                f"{images.get('train')} train / {images.get('validation')} validation / "
                f"{images.get('test')} test, {images.get('classes')} classes",
            )
        )
    facts += [
        ("backbone", str(about.get("backbone", "?"))),
        ("weights", str(about.get("weights", "?"))),
        ("image size", f"{about['image_size']} px" if "image_size" in about else "?"),
        ("search space", str(about.get("search_space", "?"))),
        ("sampler", component(about.get("sampler", sweeper.get("sampler")))),
        ("pruner", component(about.get("pruner", sweeper.get("pruner")))),
        ("trials", counts_txt),
    ]
    return facts


def header_html(study) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in header_facts(study))
    return f"<table class='about' id='about'>{rows}</table>"


def _planned(record: dict) -> int | None:
    """Epochs the trial's recipe planned (both phases), from metrics.json or its saved config."""
    phases = record.get("phases") or {}
    if "head" in phases and "finetune" in phases:
        return int(phases["head"].get("epochs", 0)) + int(phases["finetune"].get("epochs", 0))
    cfg = record.get("_config") or {}
    trainer = cfg.get("trainer") or {}
    if "head_epochs" in trainer and "finetune_epochs" in trainer:
        return int(trainer["head_epochs"]) + int(trainer["finetune_epochs"])
    return None


def _config(run_dir) -> dict:
    for name in ("resolved_config.yaml", ".hydra/config.yaml"):
        try:
            return yaml.safe_load((Path(run_dir) / name).read_text()) or {}
        except (OSError, TypeError, yaml.YAMLError):
            continue
    return {}


def _epoch_seconds(rows) -> float | None:
    secs = [r["seconds"] for r in rows if r.get("phase") == "finetune" and r.get("seconds")]
    return statistics.median(secs) if secs else None


def pruning_saved(study, recs: dict[int, dict]) -> dict:
    """Epochs run against planned for every trial with a record; for each pruned trial the epochs
    it did not run and their estimated seconds (its median fine-tuning epoch, else the sweep's)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    typical = _epoch_seconds([r for rec in recs.values() for r in rec.get("history") or []])
    out = {"run": 0, "planned": 0, "rows": [], "seconds": 0.0}
    for number, rec in sorted(recs.items()):
        if _planned(rec) is None:
            rec = {**rec, "_config": _config(run_dir(trials[number], study))}
        planned, run = _planned(rec), len(rec.get("history") or [])
        if planned is None:
            continue
        out["run"] += run
        out["planned"] += planned
        if trials[number].state.name != "PRUNED":
            continue
        per_epoch = _epoch_seconds(rec.get("history") or []) or typical or 0.0
        saved = max(planned - run, 0) * per_epoch
        out["seconds"] += saved
        out["rows"].append([number, run, planned, max(planned - run, 0), round(saved, 1)])
    return out


def _cache_seconds(rec: dict) -> dict[str, float]:
    """{cache tag: seconds this trial spent building it} over the trial's phases."""
    out: dict[str, float] = {}
    for info in (rec.get("phases") or {}).values():
        if info.get("cache"):
            tag = str(info["cache"])
            out[tag] = max(out.get(tag, 0.0), float(info.get("cache_seconds") or 0.0))
    return out


def cache_saved(recs: dict[int, dict]) -> dict:
    """Per trial: the feature extraction it skipped because another trial had cached that
    boundary's activations (the costliest extraction of that cache in the sweep, less its own)."""
    cost: dict[str, float] = {}
    for rec in recs.values():
        for tag, secs in _cache_seconds(rec).items():
            cost[tag] = max(cost.get(tag, 0.0), secs)
    rows, total = [], 0.0
    for number, rec in sorted(recs.items()):
        spent = float((rec.get("time_breakdown") or {}).get("feature_extraction", 0.0))
        own = _cache_seconds(rec)
        saved = sum(max(cost[tag] - secs, 0.0) for tag, secs in own.items())
        total += saved
        rows.append([number, "; ".join(sorted(own)) or "off", round(spent, 1), round(saved, 1)])
    return {"rows": rows, "seconds": total}


def failures(study) -> list[list]:
    """[trial, params, reason, retried as] of every failed trial (a surplus one never ran) and of
    every trial that ran out of memory twice (PRUNED as infeasible, so the sampler sees it)."""
    trials = [t for t in study.get_trials(deepcopy=False) if not is_surplus(t)]
    retried = {}
    for t in trials:
        for dead in t.system_attrs.get("retry_history") or []:
            retried.setdefault(int(dead), t.number)
    rows = []
    for t in trials:
        reason = _failure_reason(t)
        if reason is None:
            continue
        again = retried.get(t.number)
        rows.append([t.number, _params(t.params), reason, "" if again is None else again])
    return rows


def _failure_reason(t) -> str | None:
    """Why `t` failed, or None when it did not."""
    if t.user_attrs.get(oom.FAIL_REASON) == "oom":
        retry = t.user_attrs.get(oom.RETRY_ATTR) or {}
        sizes = f" twice (batch {retry['from']}, then {retry['batch_size']})" if retry else ""
        error = t.user_attrs.get("error")
        said = f"out of memory{sizes}: infeasible, the sampler avoids it"
        return f"{said}; {error}" if error else said
    if t.state.name != "FAIL":
        return None
    return (
        t.user_attrs.get("error")
        or t.user_attrs.get("interrupted")
        or t.user_attrs.get("fail_reason")
        or t.system_attrs.get("fail_reason")  # a study file from Optuna 2, which recorded it here
        or "its worker stopped (killed or lost: no heartbeat within the grace period) "
        "before it could say why"
    )


def _params(params: dict) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _rows_html(header: list[str], rows: list[list], cls: str) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def compute_html(study, recs: dict[int, dict]) -> str:
    """What pruning and the feature cache saved, in words and per trial."""
    pruned, cache = pruning_saved(study, recs), cache_saved(recs)
    parts = ["<section id='compute'><h2>Compute saved</h2>"]
    if pruned["planned"]:
        share = 1 - pruned["run"] / pruned["planned"]
        parts.append(
            f"<p class='pruning'>Pruning: {pruned['run']} epochs run of {pruned['planned']} "
            f"planned ({share:.0%} not run); the {len(pruned['rows'])} pruned "
            f"{'trial' if len(pruned['rows']) == 1 else 'trials'} skipped "
            f"about {pruned['seconds']:.0f} s (their epochs left, at their median fine-tuning "
            "epoch time; early stopping might have ended some sooner).</p>"
        )
        if pruned["rows"]:
            parts.append(
                _rows_html(
                    ["trial", "epochs run", "planned", "not run", "seconds saved (est.)"],
                    pruned["rows"],
                    "review pruning",
                )
            )
    else:
        parts.append("<p class='pruning'>Pruning: no trial recorded its epochs yet.</p>")
    parts.append(
        f"<p class='cache'>Feature cache: about {cache['seconds']:.0f} s of feature extraction "
        "skipped (a trial reusing activations another trial cached, against the extraction "
        "that built them).</p>"
    )
    if cache["rows"]:
        parts.append(
            _rows_html(
                ["trial", "cache", "extraction seconds", "seconds saved"],
                cache["rows"],
                "review cache",
            )
        )
    return "".join(parts) + "</section>"


def failures_html(study) -> str:
    rows = failures(study)
    if not rows:
        return "<section id='failures'><h2>Failures</h2><p>No trial failed.</p></section>"
    table = _rows_html(["trial", "params", "reason", "retried as"], rows, "review failures")
    return f"<section id='failures'><h2>Failures ({len(rows)})</h2>{table}</section>"
