"""report.html and compare.html opened in a real headless Chromium (DevTools protocol): the console
stays free of errors, and the charts and tables are drawn in the page (not a string search in the
file)."""

from browser import need_chromium, visit
from sweeps import make_sweep

from thaw.report.compare import build_comparison
from thaw.report.html import build_report

# what the page shows once plotly has drawn: traces per chart, rows per table
DRAWN = """(() => {
  const traces = {};
  document.querySelectorAll('.js-plotly-plot').forEach(p => {
    traces[p.id] = p.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length;
  });
  const rows = sel => document.querySelectorAll(sel).length;
  const charts = document.querySelectorAll('section.plot:not(.missing)').length;
  const drawn = Object.values(traces).filter(n => n > 0).length;
  return document.readyState === 'complete' && charts > 0 && drawn === charts && {
    traces: traces,
    about: rows('#about tr'), trials: rows('table.trials tbody tr'),
    pruning: rows('table.pruning tbody tr'), cache: rows('table.cache tbody tr'),
    failures: rows('table.failures tbody tr'), sweeps: rows('#sweeps tr'),
  };
})()"""
SORTED = """(() => {
  const th = [...document.querySelectorAll('table.trials th')]
    .find(h => h.textContent === 'objective');
  th.click(); th.click();  // descending
  return document.querySelector('table.trials tbody tr').cells[0].textContent;
})()"""


def test_report_renders_without_console_errors(tmp_path):
    need_chromium()
    make_sweep(tmp_path / "sw")
    page = build_report(str(tmp_path / "sw"))
    seen = visit(page.as_uri(), DRAWN, tmp_path / "profile")
    assert seen.ready, seen
    assert seen.errors == [], seen.errors
    drawn = seen.value
    for chart in ("plot-trials", "plot-curves", "plot-times", "plot-history", "plot-intermediate"):
        assert drawn["traces"].get(chart, 0) > 0, (chart, drawn)
    assert drawn["traces"]["plot-curves"] == 4  # one line per trial
    assert drawn["about"] == 9 and drawn["trials"] == 4
    assert drawn["pruning"] == 1 and drawn["cache"] == 4 and drawn["failures"] == 1
    # the trials table sorts in the page: descending objective puts the best trial first
    assert visit(page.as_uri(), SORTED, tmp_path / "profile2").value == "0"


def test_comparison_renders_without_console_errors(tmp_path):
    need_chromium()
    make_sweep(tmp_path / "a", "a")
    make_sweep(tmp_path / "b", "b", plan=[("COMPLETE", [0.6, 0.95]), ("PRUNED", [0.4])])
    page = build_comparison([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "out")
    seen = visit(page.as_uri(), DRAWN, tmp_path / "profile")
    assert seen.ready and seen.errors == [], seen
    assert seen.value["traces"]["plot-curves"] == 4 + 2  # both sweeps' trials, overlaid
    assert seen.value["traces"]["plot-trials"] == 3 + 2 + 2  # a: 3 states, b: 2; each a ring
    assert seen.value["sweeps"] >= 12  # one row per fact, a column per sweep
