"""`thaw-report SWEEP_A SWEEP_B ...`: several sweeps side by side on one self-contained page: what
each was about and its best trial, every trial of all of them on one depth x learning-rate plane,
and their learning curves overlaid (colour: the sweep)."""

from __future__ import annotations

import html
import logging
from pathlib import Path

from thaw.errors import ConfigError
from thaw.report.plots import (
    AXIS,
    DEPTH,
    LR,
    MARKERS,
    chosen_ring,
    epoch_xy,
    last_value,
    value_label,
)
from thaw.runtime.chosen_trial import chosen_trial
from thaw.runtime.outputs import write_text_atomic

log = logging.getLogger(__name__)
esc = html.escape
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def _labels(studies) -> list[str]:
    """The study names, made unique (the same study name in two storages gets #2)."""
    out, seen = [], {}
    for s in studies:
        seen[s.study_name] = seen.get(s.study_name, 0) + 1
        out.append(s.study_name + (f" #{seen[s.study_name]}" if seen[s.study_name] > 1 else ""))
    return out


def trials_plane(studies, labels):
    """Every trial of every sweep at its (depth, lr): colour by sweep, marker by state; each sweep
    a little apart at a depth, so sweeps that drew the same points (the same sampler seed) do not
    hide one another."""
    import plotly.graph_objects as go

    fig = go.Figure()
    width = min(0.5, 0.15 * (len(studies) - 1))
    for i, (study, label) in enumerate(zip(studies, labels)):
        colour = PALETTE[i % len(PALETTE)]
        dodge = width * (i / (len(studies) - 1) - 0.5) if len(studies) > 1 else 0.0
        for state, marker in MARKERS.items():
            group = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.state.name == state and DEPTH in t.params
            ]
            if not group:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[t.params[DEPTH] + dodge for t in group],
                    y=[t.params.get(LR) for t in group],
                    mode="markers",
                    name=f"{label}: {state.lower()} ({len(group)})",
                    legendgroup=label,
                    marker=dict(symbol=marker, size=11, color=colour, line=dict(width=1)),
                    text=[_hover(label, t) for t in group],
                    hoverinfo="text",
                )
            )
        ring = chosen_ring(study, DEPTH, LR, colour, dodge, label)
        if ring is not None:
            fig.add_trace(ring)
    fig.update_layout(
        xaxis_title=AXIS[DEPTH], yaxis_title=AXIS[LR], legend=dict(orientation="h", y=-0.25)
    )
    fig.update_yaxes(type="log")
    return fig if fig.data else None


def _hover(label: str, t) -> str:
    v = last_value(t)
    return (
        f"{label} trial {t.number}: {t.state.name.lower()}, {'?' if v is None else f'{v:.4f}'}"
        f"<br>depth {t.params.get(DEPTH)}, lr {t.params.get(LR, 0):.3g}"
    )


def curves(studies, labels):
    """Every trial's validation value per epoch, the sweeps' curves overlaid (colour: sweep)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (study, label) in enumerate(zip(studies, labels)):
        shown = False
        for t in study.get_trials(deepcopy=False):
            if not t.intermediate_values:
                continue
            x, y = epoch_xy(t)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines",
                    name=label,
                    legendgroup=label,
                    showlegend=not shown,
                    line=dict(color=PALETTE[i % len(PALETTE)], width=1.5),
                    opacity=0.7,
                    text=f"{label} trial {t.number} ({t.state.name.lower()})",
                    hoverinfo="text+y",
                )
            )
            shown = True
    fig.update_layout(
        xaxis_title="epoch",
        yaxis_title=value_label(studies[0]),
        legend=dict(orientation="h", y=-0.25),
    )
    return fig if fig.data else None


def _best(study) -> list[str]:
    """The chosen trial's value, number and params, and the verdict."""
    b = chosen_trial(study)
    if b is None:
        return ["", "", "", ""]
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.params.items()
    )
    return [f"{b.value:.4f}", str(b.number), params, study.user_attrs.get("verdict") or ""]


def _side_by_side(studies, labels, targets) -> str:
    """One column per sweep: where it is, what it was about, its best trial and verdict."""
    from thaw.report.review import header_facts

    facts = [dict(header_facts(s)) for s in studies]
    keys = list(dict.fromkeys(k for f in facts for k in f))
    rows = [("study", labels), ("from", [str(t) for t in targets])]
    rows += [(k, [f.get(k, "") for f in facts]) for k in keys]
    best = [_best(s) for s in studies]
    for i, name in enumerate(("chosen trial's value", "chosen trial", "its params", "verdict")):
        rows.append((name, [b[i] for b in best]))
    body = "".join(
        f"<tr><th>{esc(k)}</th>" + "".join(f"<td>{esc(str(v))}</td>" for v in vals) + "</tr>"
        for k, vals in rows
    )
    return f"<table class='compare' id='sweeps'>{body}</table>"


def _section(slug: str, title: str, fig) -> str:
    if fig is None:
        return f"<section class='plot missing'><h2>{esc(title)}</h2><p>No trials yet.</p></section>"
    fig.update_layout(height=480, margin=dict(l=60, r=20, t=20, b=50))
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{slug}")
    return f"<section class='plot' id='{slug}'><h2>{esc(title)}</h2>{div}</section>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.compare { border-collapse: collapse; font-size: 13px; }
table.compare td, table.compare th { border: 1px solid #ccc; padding: 3px 8px; vertical-align: top;
  text-align: left; max-width: 40em; }
section.plot { display: inline-block; width: 48%; min-width: 480px; vertical-align: top;
  margin: 0 1% 1.5em 0; box-sizing: border-box; padding: 0 0.5em; border-top: 1px solid #ddd; }
section.plot h2 { font-size: 1.05em; }
"""


def build_comparison(targets: list[str], out_dir: Path | None = None) -> Path:
    """compare.html for several sweeps (sweep dirs, journal files or storage URLs holding one
    study each); returns its path."""
    from plotly.offline import get_plotlyjs

    from thaw.report.html import open_study

    if len(targets) < 2:
        raise ConfigError("comparing sweeps needs at least two of them")
    studies = [open_study(t, None)[0] for t in targets]
    labels = _labels(studies)
    out = Path(out_dir) if out_dir else Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>thaw: {len(studies)} sweeps compared</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>{_STYLE}</style></head><body>
<h1>{len(studies)} sweeps compared</h1>
{_side_by_side(studies, labels, targets)}
{
        _section(
            "trials",
            "Every trial of every sweep: unfreeze depth x learning rate (colour: the sweep; "
            "marker: the state)",
            trials_plane(studies, labels),
        )
    }
{
        _section(
            "curves",
            "Learning curves, the sweeps overlaid (colour: the sweep)",
            curves(studies, labels),
        )
    }
</body></html>
"""
    path = out / "compare.html"
    write_text_atomic(path, page)
    log.info("report: %s (%d sweeps, %.1f MB)", path, len(studies), path.stat().st_size / 1e6)
    return path
