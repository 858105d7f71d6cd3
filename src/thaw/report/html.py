"""`thaw-report`: one self-contained HTML page (and PNGs) reviewing a sweep, from its Optuna study.

Plots come from optuna.visualization (plotly, embedded inline so the page opens from disk with no
network) and optuna.visualization.matplotlib for the PNGs.
"""

from __future__ import annotations

import html
import logging
import warnings
from pathlib import Path

from thaw.errors import ConfigError
from thaw.report.plots import DEPTH, LR
from thaw.report.review import run_dir
from thaw.runtime.outputs import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)


def _storage(target: str):
    """(storage or URL, output dir) for a sweep dir, a journal file or an Optuna storage URL."""
    from thaw.sweeper.storage import journal_path, make_storage
    from thaw.sweeper.sweep_dir import storage_of

    journal = journal_path(target)
    if journal is not None:
        if not Path(journal).is_file():
            raise ConfigError(f"{target}: no such journal file")
        return make_storage(target), Path(journal).resolve().parent
    path = Path(target)
    if "://" not in target:
        if path.is_file() and path.suffix == ".db":
            raise ConfigError(
                f"{target}: an SQLite file; pass its sweep dir ({path.parent}) or "
                f"sqlite:///{path.resolve()}"
            )
        if not path.is_dir():
            raise ConfigError(f"{target}: not a sweep directory or storage URL")
        url = storage_of(path, "thaw-report")  # its own study.db or journal, else the recorded
        if url is None:
            inside = (
                " (a trial's run dir: pass its sweep dir)"
                if (path.parent / "study.db").is_file()
                else " (pass the storage URL instead)"
            )
            raise ConfigError(f"{target}: no study.db or journal file in this directory{inside}")
        return (make_storage(url) if journal_path(url) else url), path
    return target, Path.cwd()


def open_study(target: str, study_name: str | None = None):
    """(study, output dir) from a sweep dir holding study.db, a journal file, or an Optuna storage
    URL."""
    import optuna

    from thaw.sweeper.storage import existing_study_db

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, out_dir = _storage(target)
    if isinstance(url, str):
        existing_study_db(url, target)
    try:
        names = optuna.get_all_study_names(storage=url)
    except Exception as exc:
        raise ConfigError(
            f"{target}: cannot open the storage ({str(exc).splitlines()[0][:200]})"
        ) from None
    if not names:
        raise ConfigError(f"{target}: the storage holds no study")
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(
                f"{target}: holds {len(names)} studies ({', '.join(names) or 'none'}); "
                "choose one with --study"
            )
        study_name = names[0]
    elif study_name not in names:
        raise ConfigError(
            f"--study: no study {study_name!r} in {target} (found: {', '.join(names) or 'none'})"
        )
    study = optuna.load_study(study_name=study_name, storage=url)
    study.thaw_sweep_dir = out_dir.resolve() if "://" not in target else None  # review.run_dir
    return study, out_dir


def _figures(study) -> list[tuple[str, str, object, object]]:
    """(slug, title, plotly figure or None, matplotlib function or None); None where too few
    trials."""
    from optuna import visualization as vis
    from optuna.visualization import matplotlib as vmat

    out = []
    for slug, title, make, ok in _figure_specs(study):
        fig = None
        if ok and len(study.directions) == 1:
            try:
                fig = make(vis)
            except Exception as exc:  # e.g. importance with degenerate data
                log.warning("report: %s not drawn: %s", title, exc)
            if fig is not None and slug in ("depth", "lr"):  # early trials are near-white
                fig.update_traces(
                    marker=dict(size=10, line=dict(width=1, color="#444")),
                    selector=dict(mode="markers"),
                )
        out.append((slug, title, fig, (lambda m=make: m(vmat)) if fig is not None else None))
    return out


def _figure_specs(study) -> list[tuple[str, str, object, bool]]:
    """(slug, title, draw given optuna's plotly or matplotlib module, whether the study has the
    trials to draw it) of each figure."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    params = sorted({p for t in complete for p in t.params})
    varying = [p for p in params if len({repr(t.params.get(p)) for t in complete}) > 1]
    return [
        (
            "history",
            "Optimisation history",
            lambda m: m.plot_optimization_history(study),
            len(complete) >= 1,
        ),
        (
            "importance",
            "Parameter importances",
            lambda m: m.plot_param_importances(study),
            len(complete) >= 2 and len(varying) >= 1,
        ),
        (
            "depth",
            "Optuna slice plot: objective against unfreeze depth (COMPLETE trials only)",
            lambda m: m.plot_slice(study, params=[DEPTH]),
            DEPTH in params,
        ),
        (
            "lr",
            "Optuna slice plot: objective against learning rate (COMPLETE trials only)",
            lambda m: m.plot_slice(study, params=[LR]),
            LR in params,
        ),
        (
            "intermediate",
            "Optuna's intermediate values per trial (step 0 is epoch 1; pruned trials stop early)",
            lambda m: m.plot_intermediate_values(study),
            any(t.intermediate_values for t in study.get_trials(deepcopy=False)),
        ),
    ]


def _trial_rows(study):
    rows = []
    params = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    for t in study.get_trials(deepcopy=False):
        value = t.values[0] if t.values and len(t.values) == 1 else (t.values or "")
        dur = t.duration.total_seconds() if t.duration else None
        note = (
            t.user_attrs.get("error")
            or t.user_attrs.get("pruned")
            or t.user_attrs.get("interrupted")
            or ""
        )
        rows.append(
            [
                t.number,
                t.state.name,
                value,
                *[t.params.get(p, "") for p in params],
                f"{dur:.1f}" if dur is not None else "",
                str(run_dir(t, study) or ""),
                note,
            ]
        )
    return ["#", "state", "objective", *params, "seconds", "run dir", "note"], rows


_SORT_JS = """
document.querySelectorAll('table.trials th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _plot_section(slug: str, title: str, fig, png: str | None = None) -> str:
    esc = html.escape
    if fig is None:
        return (
            f'<section class="plot missing"><h2>{esc(title)}</h2>'
            "<p>Not enough finished trials for this plot yet.</p></section>"
        )
    fig.update_layout(title=None, height=420, margin=dict(l=60, r=20, t=20, b=50))
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{slug}")
    link = f'<p><a href="{png}">PNG</a></p>' if png else ""
    return f'<section class="plot" id="{slug}"><h2>{esc(title)}</h2>{div}{link}</section>'


def _save_png(make_png, path: Path, title: str) -> bool:
    """Rendered in memory, then written whole: a kill mid-write leaves the last report's PNG."""
    import io

    import matplotlib.pyplot as plt

    try:
        ax = make_png()
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=110)
        plt.close(figure)
        write_bytes_atomic(path, png.getvalue())
        return True
    except Exception as exc:
        log.warning("report: PNG for %s not written: %s", title, exc)
        return False


def _sections(study, png_dir: Path) -> list[str]:
    """thaw's own plots first (every trial, learning curves, time), then Optuna's with PNG
    copies."""
    from thaw.report.plots import own_figures

    sections = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for slug, title, fig in own_figures(study):
            sections.append(_plot_section(slug, title, fig))
        for slug, title, fig, make_png in _figures(study):
            png = (
                f"report_png/{slug}.png"
                if fig is not None and _save_png(make_png, png_dir / f"{slug}.png", title)
                else None
            )
            sections.append(_plot_section(slug, title, fig, png))
    return sections


def _table(rows, header) -> str:
    esc = html.escape
    table = [
        "<table class='trials'><thead><tr>",
        *[f"<th>{esc(str(h))}</th>" for h in header],
        "</tr></thead><tbody>",
    ]
    for row in rows:
        table.append(
            f"<tr class='{esc(row[1].lower())}'>"
            + "".join(f"<td>{esc(_fmt(c))}</td>" for c in row)
            + "</tr>"
        )
    table.append("</tbody></table>")
    return "".join(table)


def _about_html(study) -> str:
    """The sweep's answer in words (thaw-train sweeps record it on the study), then what it was
    about: data, images, backbone, weights, image size, search space, sampler, pruner, trials."""
    from thaw.report.review import header_html

    verdict = study.user_attrs.get("verdict")
    parts = []
    if verdict:
        text = html.escape(verdict[0].upper() + verdict[1:])
        parts.append(f"<p class='verdict'><b>{text}.</b></p>")
    return "".join(parts) + header_html(study)


def _best_html(study) -> str:
    """The trial the sweep answers with (its confirmed winner where the search's best lost the
    confirmation), and its held-out test accuracy."""
    from thaw.runtime.chosen_trial import chosen_trial

    esc = html.escape
    b = chosen_trial(study)
    if b is None:
        return ""
    best = (
        f"<p class='best'>Chosen trial <b>{b.number}</b>: objective "
        f"<b>{esc(_fmt(b.value))}</b>, params {esc(str(b.params))}, run dir "
        f"{esc(str(run_dir(b, study) or '?'))}</p>"
    )
    top = study.best_trial
    if top.number != b.number and (study.user_attrs.get("confirmation") or {}).get("runs"):
        best += (
            f"<p class='best'>The search's best, trial {top.number} ({esc(_fmt(top.value))}), "
            f"ranked below trial {b.number} on the mean over seeds when the top trials ran "
            "again.</p>"
        )
    test_eval = study.user_attrs.get("test_eval") or {}
    if test_eval.get("trial") == b.number:
        best += (
            f"<p class='best'>Held-out test accuracy of trial {b.number}: "
            f"<b>{esc(_fmt(test_eval.get('test_accuracy')))}</b> "
            f"({esc(str(test_eval.get('num_test')))} images)</p>"
        )
    return best


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
section.plot { display: inline-block; width: 48%; min-width: 480px; vertical-align: top;
  margin: 0 1% 1.5em 0; box-sizing: border-box; padding: 0 0.5em; border-top: 1px solid #ddd; }
section.plot h2 { font-size: 1.05em; }
table.trials { border-collapse: collapse; font-size: 13px; }
table.trials th { cursor: pointer; background: #eee; }
table.trials td, table.trials th { border: 1px solid #ccc; padding: 3px 8px; }
tr.pruned { color: #996600; } tr.fail { color: #b00; }
table.about th { text-align: left; padding-right: 1em; font-weight: 600; }
table.review { border-collapse: collapse; font-size: 13px; margin-bottom: 1em; }
table.review td, table.review th { border: 1px solid #ccc; padding: 3px 8px; }
"""


def build_report(target: str, study_name: str | None = None, out_dir: Path | None = None) -> Path:
    """Write report.html (self-contained: plotly inline) and report_png/*.png; returns the HTML
    path."""
    import matplotlib

    matplotlib.use("Agg")
    from plotly.offline import get_plotlyjs

    from thaw.report import review

    study, default_out = open_study(target, study_name)
    out = Path(out_dir) if out_dir else default_out
    png_dir = out / "report_png"
    png_dir.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    sections = _sections(study, png_dir)
    header, rows = _trial_rows(study)
    recs = review.records(study)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>thaw sweep: {esc(study.study_name)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>{_STYLE}</style></head><body>
<h1>Sweep report: {esc(study.study_name)}</h1>
<p>Direction: {esc(", ".join(d.name.lower() for d in study.directions))}.</p>
{_about_html(study)}
{_best_html(study)}
{review.compute_html(study, recs)}
{review.failures_html(study)}
{"".join(sections)}
<h2>Trials</h2><p>Click a column header to sort.</p>
{_table(rows, header)}
<script>{_SORT_JS}</script>
</body></html>
"""
    path = out / "report.html"
    write_text_atomic(path, page)
    log.info("report: %s (%.1f MB, self-contained)", path, path.stat().st_size / 1e6)
    return path
