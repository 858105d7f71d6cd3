"""The scheduler: a finished trial frees its slot at once (no batch barrier), each in-flight trial
has its own device, and a trial that runs out of memory is run once more at half batch, then ends
as infeasible. The app (tests/apps/slots_app.py) is a plain Hydra app run as a real subprocess; its
jobs write what they were given to a marks directory."""

import contextvars
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from thaw.report import review

APPS = Path(__file__).parents[1] / "apps"
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]


def sweep(tmp_path, *args, ok=True):
    proc = subprocess.run(
        [
            sys.executable,
            "slots_app.py",
            "--multirun",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
            f"marks={tmp_path / 'marks'}",
            "hydra.sweeper.confirm.top_k=0",
            *args,
        ],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HYDRA_FULL_ERROR="0"),
    )
    if ok:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def load(tmp_path):
    storage = f"sqlite:///{tmp_path / 'sw' / 'study.db'}"
    return optuna.load_study(storage=storage, study_name="slots")


def trials(tmp_path):
    return load(tmp_path).get_trials()


def records(tmp_path):
    return {
        int(p.stem): json.loads(p.read_text()) for p in (tmp_path / "marks").glob("[0-9]*.json")
    }


def attempts(tmp_path):
    lines = (tmp_path / "marks" / "attempts.jsonl").read_text().splitlines()
    return [json.loads(ln) for ln in lines]


SUBMITIT = [
    "hydra/launcher=submitit_local",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
    "hydra.sweeper.n_jobs=2",
]


@pytest.mark.parametrize(
    "launcher",
    [JOBLIB, pytest.param(SUBMITIT, marks=pytest.mark.slow)],
    ids=["joblib", "submitit"],
)
def test_a_finished_trial_frees_its_slot_at_once(tmp_path, launcher):
    """Trial 0 returns only once 3 other trials have finished; with 2 slots they can only have run
    in the other slot while trial 0 was in flight (a batch barrier would hold trial 2 until trial 0
    ended, and trial 0 would give up after its timeout having seen 1)."""
    if launcher is SUBMITIT:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep(tmp_path, *launcher, "hydra.sweeper.n_trials=5", "gate=3", "gate_timeout=120")
    assert_no_barrier(tmp_path)


def assert_no_barrier(tmp_path):
    """What a gated 5-trial sweep on 2 slots leaves when a finished trial frees its slot at once."""
    ts = {t.number: t for t in trials(tmp_path)}
    assert sorted(ts) == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in ts.values())
    assert records(tmp_path)[0]["gate_seen"] >= 3
    # trials 1, 2 and 3 were asked and launched while trial 0 was in flight (a barrier holds
    # trial 2 until trial 0 ends); when each is told depends on how often the launcher polls its
    # jobs (submitit's polling told trial 3 after trial 0 once under load in CI)
    assert all(ts[n].datetime_start < ts[0].datetime_complete for n in (1, 2, 3))


def test_in_flight_trials_never_share_a_device(tmp_path):
    sweep(
        tmp_path,
        *JOBLIB,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.devices=[0,1]",
        "hold=0.5",
        "gate=3",  # trial 0 stays in flight while 3 others run: the slots overlap by structure
        "gate_timeout=120",
    )
    ts = {t.number: t for t in trials(tmp_path)}
    recs = records(tmp_path)
    assert sorted(recs) == sorted(ts) == list(range(6))
    for n, rec in recs.items():  # the job saw the device the trial records
        assert rec["device"] == ts[n].user_attrs["device"] in ("0", "1")
    overlapping = [
        (a, b)
        for a in recs
        for b in recs
        if a < b and recs[a]["start"] < recs[b]["end"] and recs[b]["start"] < recs[a]["end"]
    ]
    assert overlapping, "the two slots never ran at once"
    for a, b in overlapping:
        assert recs[a]["device"] != recs[b]["device"], (a, b, recs[a], recs[b])


def test_more_slots_than_devices_is_refused_in_one_line(tmp_path):
    proc = sweep(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.devices=[0,1]",
        ok=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "n_jobs=3 with 2 device(s)" in err[0], proc.stderr[-2000:]
    assert not (tmp_path / "marks").exists()


def test_the_in_process_launcher_gives_its_job_the_device(tmp_path):
    sweep(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.devices=[3]")
    assert {r["device"] for r in records(tmp_path).values()} == {"3"}
    assert {t.user_attrs["device"] for t in trials(tmp_path)} == {"3"}


@pytest.mark.parametrize("tell_itself", [False, True], ids=["app-raises", "job-tells-trial"])
def test_out_of_memory_is_retried_once_at_half_batch(tmp_path, tell_itself):
    sweep(tmp_path, "hydra.sweeper.n_trials=1", "oom_above=40", f"tell_itself={tell_itself}")
    (t,) = trials(tmp_path)
    assert t.state == TrialState.COMPLETE
    assert t.user_attrs["oom_retry"] == {"batch_size": 32, "from": 64}
    assert "fail_reason" not in t.user_attrs
    assert [a["batch_size"] for a in attempts(tmp_path)] == [64, 32]
    assert review.failures(load(tmp_path)) == []  # retried and completed: not a failure
    metrics = json.loads((tmp_path / "sw" / "trial_0" / "metrics.json").read_text())
    assert metrics["batch_size"] == 32 and metrics["oom_retry"] == {"batch_size": 32, "from": 64}


@pytest.mark.parametrize("tell_itself", [False, True], ids=["app-raises", "job-tells-trial"])
def test_a_second_out_of_memory_makes_the_trial_infeasible(tmp_path, tell_itself):
    sweep(tmp_path, "hydra.sweeper.n_trials=2", "oom_above=10", f"tell_itself={tell_itself}")
    ts = trials(tmp_path)
    assert len(ts) == 2  # each ran out of memory twice, and both count
    assert [a["batch_size"] for a in attempts(tmp_path)] == [64, 32, 64, 32]
    for t in ts:
        # PRUNED: Optuna's samplers ignore FAIL trials; this one they rank below every feasible
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["fail_reason"] == "oom"
        assert "ResourceExhaustedError" in t.user_attrs["error"]
        assert t.constraints == {"oom": 1.0}
    from optuna.samplers._tpe.sampler import _get_infeasible_trial_score

    assert all(_get_infeasible_trial_score(t) > 0 for t in ts)
    rows = review.failures(load(tmp_path))  # the report's Failures table says why
    assert [r[0] for r in rows] == [0, 1]
    for _, _, reason, _ in rows:
        assert reason.startswith("out of memory twice (batch 64, then 32): infeasible")
        assert "ResourceExhaustedError" in reason


def test_the_current_trial_handle_is_per_context():
    """Issue 30: the handle lives in a ContextVar, not a module global: a handle set in another
    context is not this one's, and release() here leaves it alone."""
    from thaw.sweeper import current

    class Handle:
        closed = False

        def close(self):
            self.closed = True

    other = Handle()
    ctx = contextvars.copy_context()
    ctx.run(current._HANDLE.set, other)
    assert ctx.run(current._HANDLE.get) is other
    assert current._HANDLE.get() is None
    current.release()
    assert not other.closed
    ctx.run(current.release)
    assert other.closed and ctx.run(current._HANDLE.get) is None


def test_the_failure_rate_is_judged_per_n_consecutive_finished_trials():
    """hydra-optuna-sweeper's per-batch rule without batches: every n_jobs trials in the order they
    finished, then the shorter run left at the end."""
    from thaw.sweeper.failures import TooManyFailures
    from thaw.sweeper.schedule import FailureWindow

    def frozen(state):
        return optuna.trial.create_trial(
            state=state, value=1.0 if state == TrialState.COMPLETE else None
        )

    ok, bad = frozen(TrialState.COMPLETE), frozen(TrialState.FAIL)
    window = FailureWindow(3, 0.5)
    for t in (bad, ok, ok, ok, bad):  # 1 of 3, then 1 of 3 so far: under the rate
        window.add(t)
    with pytest.raises(TooManyFailures, match="per 3 consecutive trials"):
        window.add(bad)  # 2 of the second 3
    window.add(bad)
    with pytest.raises(TooManyFailures):
        window.close()  # the last, shorter run: 1 of 1
    unset = FailureWindow(2, None)
    for t in (bad, bad, bad):
        unset.add(t)
    unset.close()  # unset: thaw's own rule applies elsewhere


def test_ctrl_c_with_trials_in_launch_threads_fails_them_as_interrupted(tmp_path):
    """The launch threads block in joblib; Ctrl-C reaches the sweeping process's main thread,
    which fails the trials in flight as interrupted (resumable) and stops the workers."""
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "slots_app.py",
            "--multirun",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
            f"marks={tmp_path / 'marks'}",
            "hydra.sweeper.confirm.top_k=0",
            *JOBLIB,
            "hydra.sweeper.n_trials=4",
            "hold=600",
        ],
        cwd=APPS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # as from a terminal: a pytest-xdist worker ignores SIGINT, and a child inherits that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        start_new_session=True,
    )
    try:
        started = tmp_path / "marks" / "attempts.jsonl"
        while not (started.exists() and len(started.read_text().splitlines()) == 2):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)  # the jobs would hold for 600 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-3000:]
    ts = trials(tmp_path)
    assert len(ts) == 2
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("interrupted") for t in ts)
    assert "launching trial(s)" not in out


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("hydra.sweeper.scheduling=eager", "expected continuous or batch"),
        ("hydra.sweeper.devices=[0,0]", "expected distinct device ids"),
    ],
)
def test_bad_scheduling_settings_are_one_line_exit_2(tmp_path, arg, needle):
    proc = sweep(tmp_path, arg, ok=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0], proc.stderr[-2000:]


def test_timeout_stops_new_trials_and_lets_the_one_in_flight_finish(tmp_path):
    """In process, trial 0 starts at once and holds 6 s: the 3 s timeout passes while it runs, it
    finishes, and no trial starts after it (by structure, not by how fast the machine is)."""
    proc = sweep(tmp_path, "hold=6.0", "hydra.sweeper.n_trials=20", "hydra.sweeper.timeout=3")
    done = trials(tmp_path)
    assert [(t.number, t.state) for t in done] == [(0, TrialState.COMPLETE)]
    rec = records(tmp_path)[0]
    assert rec["end"] - rec["start"] >= 6.0  # in flight when the timeout passed
    assert "timeout: 3 s of search spent" in proc.stdout + proc.stderr


def test_a_timeout_that_is_not_positive_is_refused(tmp_path):
    proc = sweep(tmp_path, "hydra.sweeper.timeout=0", ok=False)
    assert proc.returncode == 2 and "hydra.sweeper.timeout: must be > 0" in proc.stderr
    assert not (tmp_path / "marks").exists()


def test_a_trial_run_once_more_gets_the_device_it_gave_back():
    """The out-of-memory retry runs where the trial ran, even when another device is free too."""
    from thaw.sweeper.devices import DevicePool

    pool = DevicePool(["0", "1"])
    assert [pool.take(10, set()), pool.take(11, set())] == ["0", "1"]
    pool.give_back(10)
    pool.give_back(11)  # trial 11 ran out of memory: both devices are free now
    assert pool.take(11, set()) == "1"
    assert pool.take(12, set()) == "0"


def test_by_default_every_visible_gpu_is_a_device(tmp_path, monkeypatch):
    """hydra.sweeper.devices unset: CUDA_VISIBLE_DEVICES when set (-1 or empty: none), else the
    GPUs nvidia-smi lists, else none."""
    from thaw.sweeper.devices import parse

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert parse(None) == ["2", "3"]
    for hidden in ("-1", ""):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert parse(None) == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    smi = tmp_path / "bin" / "nvidia-smi"  # a stand-in for the driver's tool, as it prints
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(smi.parent))
    assert parse(None) == ["0", "1"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert parse(None) == []
