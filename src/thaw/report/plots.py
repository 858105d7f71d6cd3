"""The sweep report's own plots, in the user's terms: every trial (pruned and failed too) in the
depth x learning-rate plane, learning curves against epoch with the head/fine-tune boundary, and
time per trial. Optuna's generic plots follow them on the page (thaw.report.html)."""

from __future__ import annotations

import html

from thaw.runtime.chosen_trial import chosen_trial
from thaw.sweeper.failures import is_surplus

DEPTH, LR = "unfreeze.depth", "lr.base"
MARKERS = {
    "COMPLETE": "circle",
    "PRUNED": "x",
    "FAIL": "square",
    "RUNNING": "diamond",
    "WAITING": "diamond",
}
COLOURS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#d98c00",
    "FAIL": "#b00020",
    "RUNNING": "#777777",
    "WAITING": "#777777",
}
CHOSEN_COLOUR = "#2ca02c"
AXIS = {DEPTH: "unfreeze depth (blocks)", LR: "learning rate (lr.base)"}


def value_label(study) -> str:
    names = {t.user_attrs.get("objective_name") for t in study.get_trials(deepcopy=False)} - {None}
    name = names.pop() if len(names) == 1 else "objective"
    return {"val_accuracy": "validation accuracy", "val_loss": "validation loss"}.get(name, name)


def last_value(trial) -> float | None:
    """The final value for a COMPLETE trial; the last reported epoch for a pruned or failed one."""
    if trial.values and len(trial.values) == 1:
        return float(trial.values[0])
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def _axes(params: list[str]):
    x = DEPTH if DEPTH in params else (params[0] if params else None)
    rest = [p for p in params if p != x]
    y = LR if LR in rest else (rest[0] if rest else None)
    return x, y


def trials_plane(study):
    """Every trial at its (depth, lr), marker by state, colour by its (last) validation value."""
    import plotly.graph_objects as go

    trials = [t for t in study.get_trials(deepcopy=False) if not is_surplus(t)]  # never ran
    x, y = _axes(sorted({p for t in trials for p in t.params}))
    if x is None:
        return None
    label = value_label(study)
    fig = go.Figure()
    for state, marker in MARKERS.items():
        group = [t for t in trials if t.state.name == state and x in t.params]
        if not group:
            continue
        values = [last_value(t) for t in group]
        fig.add_trace(
            go.Scatter(
                x=[t.params[x] for t in group],
                y=[t.params.get(y, 0) for t in group] if y else values,
                mode="markers",
                name=f"{state.lower()} ({len(group)})",
                marker=dict(
                    symbol=marker,
                    size=12,
                    color=[v if v is not None else float("nan") for v in values],
                    coloraxis="coloraxis",
                    line=dict(width=1, color=COLOURS[state]),
                ),
                text=[
                    f"trial {t.number}: {state.lower()}, {label} {'?' if v is None else f'{v:.4f}'}"
                    for t, v in zip(group, values)
                ],
                hoverinfo="text",
            )
        )
    ring = chosen_ring(study, x, y)
    if ring is not None:
        fig.add_trace(ring)
    fig.update_layout(
        coloraxis=dict(colorscale="Viridis", colorbar=dict(title=label)),
        xaxis_title=AXIS.get(x, x),
        yaxis_title=AXIS.get(y, y) if y else label,
        legend=dict(orientation="h", y=-0.2),
    )
    if y == LR:
        fig.update_yaxes(type="log")
    return fig


def chosen_ring(
    study, x: str, y: str | None, colour: str = CHOSEN_COLOUR, dodge: float = 0.0, label=None
):
    """A ring around the chosen trial's point in a (x, y) plane (moved `dodge` along x, named
    after the sweep's `label` when several share the plane); None without one."""
    import plotly.graph_objects as go

    chosen = chosen_trial(study)
    if chosen is None or x not in chosen.params:
        return None
    return go.Scatter(
        x=[chosen.params[x] + dodge],
        y=[chosen.params.get(y, 0)] if y else [last_value(chosen)],
        mode="markers",
        name=f"{label}: chosen (trial {chosen.number})"
        if label
        else f"chosen: trial {chosen.number}",
        legendgroup=label,
        marker=dict(symbol="circle-open", size=24, line=dict(width=3, color=colour)),
        hoverinfo="skip",
    )


def _head_epochs(trial, study=None) -> int | None:
    """Recorded by the trial (user attribute); for studies made before that, from its run dir."""
    if trial.user_attrs.get("head_epochs") is not None:
        return int(trial.user_attrs["head_epochs"])
    try:
        from thaw.model.inference import run_config
        from thaw.report.review import run_dir

        return int(run_config(run_dir(trial, study), needs=("trainer",)).trainer.head_epochs)
    except Exception:
        return None


def _boundaries(trials, study=None) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in trials:
        head = _head_epochs(t, study)
        if head:
            out[int(head)] = out.get(int(head), 0) + 1
    return out


def learning_curves(study):
    """Validation value per epoch, one line per trial (pruned ones dotted, the chosen trial bold,
    a state's lines toggled together in the legend), with where fine-tuning starts."""
    import plotly.graph_objects as go

    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    chosen = chosen_trial(study)
    fig = go.Figure()
    for t in sorted(trials, key=lambda t: chosen is not None and t.number == chosen.number):
        fig.add_trace(_curve(t, is_chosen=chosen is not None and t.number == chosen.number))
    boundaries = _boundaries(trials, study)
    for head, n in boundaries.items():
        fig.add_vline(
            x=head + 0.5,
            line_dash="dash",
            line_color="#444",
            annotation_text="fine-tuning starts"
            + (f" ({n} trials)" if len(boundaries) > 1 else ""),
            annotation_position="top left",
        )
    fig.update_layout(
        xaxis_title="epoch", yaxis_title=value_label(study), showlegend=len(trials) <= 20
    )
    return fig


def _curve(t, is_chosen: bool):
    """One trial's line; epochs it skipped (the head phase stopped early) are a gap, not a
    straight segment."""
    import plotly.graph_objects as go

    x, y = epoch_xy(t)
    state = t.state.name
    return go.Scatter(
        x=x,
        y=y,
        mode="lines+markers",
        name=f"trial {t.number} ({'chosen' if is_chosen else state.lower()})",
        legendgroup="chosen" if is_chosen else state,
        line=dict(
            color=CHOSEN_COLOUR if is_chosen else COLOURS.get(state),
            width=3.5 if is_chosen else 1.5,
            dash="dot" if state == "PRUNED" else "solid",
        ),
        marker=dict(size=7 if is_chosen else 4),
        opacity=1.0 if is_chosen else 0.7,
        hovertemplate=f"trial {t.number} ({state.lower()}) "
        + "epoch %{x}: %{y:.4f}<br>"
        + html.escape(", ".join(f"{k}={_short(v)}" for k, v in t.params.items()))
        + "<extra></extra>",
    )


def epoch_xy(t) -> tuple[list[int | None], list[float | None]]:
    """A trial's (epochs from 1, values), with None where it skipped epochs: a jump longer than
    its usual step between reports (an app that reports every 10 steps keeps one line)."""
    steps = sorted(t.intermediate_values)
    usual = min((b - a for a, b in zip(steps, steps[1:])), default=1)
    x: list[int | None] = []
    y: list[float | None] = []
    for i, s in enumerate(steps):
        if i and s - steps[i - 1] > usual:
            x.append(None)
            y.append(None)
        x.append(s + 1)
        y.append(t.intermediate_values[s])
    return x, y


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


PARTS = (
    "import",
    "data",
    "build",
    "feature_extraction",
    "trace",
    "compute",
    "checkpoint",
    "save",
    "test_evaluation",
    "other",
)


def trial_times(study):
    """Time per trial: stacked by where it went (metrics.json's time_breakdown, recorded on the
    trial), or, for trials without one, wall time coloured by state."""
    import plotly.graph_objects as go

    trials = [
        t for t in study.get_trials(deepcopy=False) if t.duration is not None and not is_surplus(t)
    ]
    if not trials:
        return None
    fig = go.Figure()
    split = [t for t in trials if t.user_attrs.get("time_breakdown")]
    if split:
        for part in PARTS:
            fig.add_trace(
                go.Bar(
                    x=[t.number for t in split],
                    name=part.replace("_", " "),
                    y=[t.user_attrs["time_breakdown"].get(part, 0.0) for t in split],
                )
            )
        fig.update_layout(barmode="stack", xaxis_title="trial", yaxis_title="seconds")
        trials = [t for t in trials if not t.user_attrs.get("time_breakdown")]
    for state in MARKERS:
        group = [t for t in trials if t.state.name == state]
        if group:
            fig.add_trace(
                go.Bar(
                    x=[t.number for t in group],
                    y=[t.duration.total_seconds() for t in group],
                    name=state.lower(),
                    marker_color=COLOURS[state],
                )
            )
    if not split:
        fig.update_layout(xaxis_title="trial", yaxis_title="seconds", barmode="overlay")
    return fig


def own_figures(study):
    """(slug, title, figure or None), first on the report page."""
    return [
        (
            "trials",
            "Every trial: unfreeze depth x learning rate (colour: validation value; pruned at "
            "their "
            "last epoch)",
            trials_plane(study),
        ),
        (
            "curves",
            "Learning curves per trial (dashed: the head phase ends, fine-tuning starts)",
            learning_curves(study),
        ),
        (
            "times",
            "Time per trial, by where it went (import, data, build, feature extraction, trace, "
            "compute, save, ...)",
            trial_times(study),
        ),
    ]
