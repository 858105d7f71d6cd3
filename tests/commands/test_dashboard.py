"""thaw-dashboard for real: optuna-dashboard on a sweep's SQLite study or journal file, started from
the sweep dir in a subprocess, opened in headless Chromium while trials are still being added;
every trial carries its metrics.json as an artifact; bad input is one line, exit 2."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from browser import visit
from conftest import command
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

SPACE = {
    "unfreeze.depth": IntDistribution(0, 8),
    "lr.base": FloatDistribution(1e-5, 1e-2, log=True),
}
CHARTS = "document.querySelectorAll('.js-plotly-plot .main-svg').length"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_trial(study, sw: Path, state: str, curve: list[float]):
    """A trial as a thaw sweep leaves it: its run dir with metrics.json and train.log."""
    t = study.ask(SPACE)
    run_dir = sw / f"trial_{t.number}"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"trial": t.number, "history": curve}))
    (run_dir / "train.log").write_text(f"trial {t.number}\n")
    t.set_user_attr("run_dir", str(run_dir))
    for step, v in enumerate(curve):
        t.report(v, step)
    study.tell(t, curve[-1] if state == "COMPLETE" else None, state=TrialState[state])
    return t


def make_sweep(sw: Path, storage: str):
    sw.mkdir(parents=True)
    study = optuna.create_study(study_name="depth_lr-x", storage=storage, direction="maximize")
    for state, curve in [("COMPLETE", [0.6, 0.8]), ("PRUNED", [0.5]), ("COMPLETE", [0.7, 0.9])]:
        add_trial(study, sw, state, curve)
    (sw / "optimization_results.yaml").write_text(
        yaml.safe_dump({"study_name": "depth_lr-x", "storage": storage})
    )
    return study


def start(target, port: int, *extra):
    exe = str(Path(sys.executable).with_name("thaw-dashboard"))
    proc = subprocess.Popen(
        [exe, str(target), "--port", str(port), "--sync-seconds", "0.5", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                return proc, json.loads(r.read())
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read()) from None
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("thaw-dashboard did not start")


def stop(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def trial_artifacts(storage: str, study_id: int, trial_id: int) -> dict[str, str]:
    """{filename: artifact id} of the trial's artifacts, as optuna-dashboard lists them."""
    attrs = optuna.storages.RDBStorage(storage).get_study_system_attrs(study_id)
    prefix = f"dashboard:artifacts:{trial_id}:"
    metas = [json.loads(v) for k, v in attrs.items() if k.startswith(prefix)]
    return {m["filename"]: m["artifact_id"] for m in metas if m}


def wait_for(pred, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_dashboard_of_a_live_sweep_renders_in_chromium(tmp_path):
    sw = tmp_path / "sw"
    storage = f"sqlite:///{sw / 'study.db'}"
    study = make_sweep(sw, storage)
    (sw / "report_png").mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), "navy").save(sw / "report_png" / "trials.png")
    port = free_port()
    proc, studies = start(sw, port)
    try:
        assert [s["study_name"] for s in studies["study_summaries"]] == ["depth_lr-x"]
        # a trial finished while the dashboard runs: listed and given its files, live
        late = add_trial(study, sw, "COMPLETE", [0.75, 0.95])
        sid = study._study_id
        for t in study.get_trials():
            # each file is attached in its own commit: wait for the pair, then check it is exact
            files = wait_for(
                lambda t=t: (
                    (f := trial_artifacts(storage, sid, t._trial_id))
                    and {"metrics.json", "train.log"} <= set(f)
                    and f
                )
            )
            assert set(files) == {"metrics.json", "train.log"}
            url = f"http://127.0.0.1:{port}/artifacts/{sid}/{t._trial_id}/{files['metrics.json']}"
            with urllib.request.urlopen(url, timeout=10) as r:
                assert r.read() == (sw / f"trial_{t.number}" / "metrics.json").read_bytes()
        base = f"http://127.0.0.1:{port}/dashboard/studies/{sid}"
        page = visit(base, f"{CHARTS} > 0 && {CHARTS}", tmp_path / "profile1")
        assert page.ready and page.errors == [], page
        listed = visit(
            f"{base}/trials",
            f"document.body.innerText.includes('Trial {late.number}') && "
            "document.body.innerText.includes('metrics.json') && document.body.innerText",
            tmp_path / "profile2",
        )
        assert listed.ready and listed.errors == [], listed
        assert "Pruned" in listed.value and "train.log" in listed.value
    finally:
        out = stop(proc)
    assert f"on http://127.0.0.1:{port}/" in out  # bound to the loopback address by default
    assert "Traceback" not in out


def test_dashboard_reads_a_journal_sweep_and_attaches_its_report(tmp_path):
    sw = tmp_path / "sw"
    sw.mkdir()
    journal = sw / "study.log"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.create_study(study_name="j", storage=storage, direction="maximize")
    add_trial(study, sw, "COMPLETE", [0.6, 0.7])
    (sw / "report.html").write_text("<html><body>report</body></html>")
    port = free_port()
    proc, studies = start(sw, port)  # the journal file found in the sweep dir
    try:
        assert [s["study_name"] for s in studies["study_summaries"]] == ["j"]

        def report():
            attrs = storage.get_study_system_attrs(study._study_id)
            return [json.loads(v) for k, v in attrs.items() if k.startswith("artifacts:")]

        [meta] = wait_for(report)
        assert meta["filename"] == "report.html" and meta["mimetype"] == "text/html"
    finally:
        stop(proc)


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: d / "absent", "no such sweep directory"),
        (lambda d: d, "no study here"),
        (lambda d: (d / "study.db").write_bytes(b"not a database" * 100) and d, "cannot"),
        (lambda d: f"sqlite:///{d}/nothing.db", "no such SQLite file"),
    ],
    ids=["missing", "empty-dir", "damaged-db", "missing-db-url"],
)
def test_a_missing_or_unreadable_sweep_is_one_line(tmp_path, make, expect):
    target = make(tmp_path)
    r = command("thaw-dashboard", target, "--port", str(free_port()), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("thaw-dashboard: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert expect in r.stderr and str(target).split("///")[-1] in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_copied_sweep_dir_shows_its_own_study(tmp_path, kind):
    """The copy's study, not the original's its optimization_results.yaml recorded: the
    dashboard attaches files to the study it shows."""
    import shutil

    from thaw.commands.dashboard import locate

    orig = tmp_path / "orig"
    orig.mkdir()
    if kind == "sqlite":
        url = f"sqlite:///{orig / 'study.db'}"
        optuna.create_study(study_name="s", storage=url)
    else:
        url = str(orig / "study.log")
        optuna.create_study(
            study_name="s",
            storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url)),
        )
    (orig / "optimization_results.yaml").write_text(f"storage: {url}\nstudy_name: s\n")
    assert locate(str(orig)) == (url, orig.resolve())
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy)
    own = url.replace(str(orig), str(copy.resolve()))
    assert locate(str(copy)) == (own, copy.resolve())
    # a study kept elsewhere (PostgreSQL, another file) is still the one the sweep recorded
    (copy / Path(url.split("///")[-1]).name).unlink()
    assert locate(str(copy)) == (url, copy.resolve())
