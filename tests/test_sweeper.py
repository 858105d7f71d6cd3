"""The thaw sweeper for real: Optuna on SQLite files, Hydra launchers, real worker processes."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from conftest import thaw_train

# A trial here takes seconds: 32 px, 32 images, no model file.
TINY = ["experiment=smoke", "backbone.image_size=32", "data.num_train=32", "data.num_val=16",
        "data.batch_size=16", "trainer.save_model=false"]


def sweep_args(sweep_dir, n_trials, *extra):
    # depth limited to the top 3 blocks so each trial stays small; the preset's lr.base interval is kept
    return ["--multirun", *TINY, "sweep=depth_lr", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.study_name=test", "unfreeze.depth=range(0,4)",
            *extra]


def load(sweep_dir):
    return optuna.load_study(study_name="test", storage=f"sqlite:///{sweep_dir}/study.db")


def by_state(study):
    out = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.state, []).append(t)
    return out


def popen(args, cwd, name="worker"):
    """A real sweep process in its own session; output goes to a file (a full pipe would block it)."""
    out = open(cwd / f"{name}.out", "w")
    proc = subprocess.Popen([sys.executable, "-m", "thaw.cli", *args], cwd=cwd, stdout=out,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.out_path = cwd / f"{name}.out"
    return proc


def output(proc):
    return proc.out_path.read_text()


def wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_smoke_sweep_completes_with_results(tmp_path):
    res = thaw_train(sweep_args(tmp_path / "sw", 3, "data.num_test=16", "trainer.save_model=true"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = load(tmp_path / "sw")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert 0 <= t.params["unfreeze.depth"] <= 3
        assert 1e-5 <= t.params["lr.base"] <= 1e-2
        run_dir = tmp_path / "sw" / f"trial_{t.number}"
        assert t.user_attrs["run_dir"] == str(run_dir)
        m = json.loads((run_dir / "metrics.json").read_text())
        assert m["status"] == "complete" and m["objective"] == t.value
        assert m["unfreeze"]["depth"] == t.params["unfreeze.depth"]
        assert m["lr"]["base"] == pytest.approx(t.params["lr.base"])
        # one intermediate value per epoch of both phases
        assert sorted(t.intermediate_values) == [0, 1]
        # trials never look at the test split ...
        assert ("test_accuracy" in m) == (t.number == study.best_trial.number)
    results = yaml.safe_load((tmp_path / "sw" / "optimization_results.yaml").read_text())
    assert results["trial_counts"]["COMPLETE"] == 3
    # ... only the best trial is evaluated on it, once, after the sweep
    assert 0.0 <= results["best_trial"]["test_accuracy"] <= 1.0
    assert results["best_trial"]["num_test"] == 16
    assert results["best_value"] == study.best_value
    assert results["best_params"] == study.best_params
    assert "best trial" in res.stderr + res.stdout


def test_pruner_prunes_and_keeps_intermediate_values(tmp_path):
    res = thaw_train(sweep_args(tmp_path / "sw", 2, "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                                "+hydra.sweeper.pruner.lower=1.01", "~hydra.sweeper.pruner.n_startup_trials",
                                "~hydra.sweeper.pruner.n_warmup_steps"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = load(tmp_path / "sw").get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert list(t.intermediate_values) == [0]  # pruned after the first (head) epoch
        run_dir = tmp_path / "sw" / f"trial_{t.number}"
        m = json.loads((run_dir / "metrics.json").read_text())
        assert m["status"] == "pruned" and len(m["history"]) == 1
        assert "pruned" in (run_dir / "train.log").read_text()


def test_failing_trial_is_fail_and_the_sweep_goes_on(tmp_path):
    res = thaw_train(["--multirun", *TINY, "sweep=depth_lr", f"hydra.sweep.dir={tmp_path / 'sw'}",
                      "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=test",
                      "hydra.sweeper.max_failure_rate=0.5",
                      "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
                      "~hydra.sweeper.sampler.n_startup_trials",
                      "unfreeze.depth=choice(1,99)", "lr.base=1e-3"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    states = by_state(load(tmp_path / "sw"))
    assert len(states[TrialState.COMPLETE]) == 1 and len(states[TrialState.FAIL]) == 1
    failed = states[TrialState.FAIL][0]
    assert failed.params["unfreeze.depth"] == 99
    assert "unfreeze.depth" in failed.user_attrs["error"]


def test_too_many_failures_stop_the_sweep(tmp_path):
    res = thaw_train(["--multirun", *TINY, "sweep=depth_lr", f"hydra.sweep.dir={tmp_path / 'sw'}",
                      "hydra.sweeper.n_trials=5", "hydra.sweeper.study_name=test",
                      "hydra.sweeper.max_failure_rate=0.0", "unfreeze.depth=choice(50,99)"], cwd=tmp_path)
    assert res.returncode == 1
    assert "max_failure_rate" in res.stdout + res.stderr
    assert len(load(tmp_path / "sw").get_trials()) == 1


@pytest.mark.parametrize("args,needle", [
    (["lr.base=interval(1e-2,1e-5)"], "empty interval"),
    (["hydra.sweeper.n_trials=0"], "n_trials"),
    (["hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/none"], "hydra.sweeper.storage"),
    (["lr.base=-1"], "lr.base"),
])
def test_bad_sweep_input_is_one_line_exit_2(tmp_path, args, needle):
    res = thaw_train(["--multirun", *TINY, "sweep=depth_lr", f"hydra.sweep.dir={tmp_path / 'sw'}", *args],
                     cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("thaw-train: error")]
    assert len(lines) == 1 and needle in lines[0]
    assert "Traceback" not in res.stderr


def test_resume_after_kill_9_reaches_exactly_n_trials(tmp_path):
    sw = tmp_path / "sw"
    args = sweep_args(sw, 3, "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4")
    proc = popen(args, tmp_path)
    try:
        def second_trial_running():
            if not (sw / "study.db").exists():
                return False
            try:
                trials = load(sw).get_trials(deepcopy=False)
            except Exception:
                return False
            return any(t.number == 1 and t.state == TrialState.RUNNING for t in trials) and \
                (sw / "trial_1" / "train.log").exists()
        wait_for(second_trial_running, 300, "trial 1 to start")
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    states = by_state(load(sw))
    assert len(states.get(TrialState.RUNNING, [])) == 1  # left behind by the killed process

    res = thaw_train(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = load(sw).get_trials()
    states = by_state(load(sw))
    assert TrialState.RUNNING not in states
    assert len(states[TrialState.COMPLETE]) == 3  # exactly n_trials finished
    stale = states[TrialState.FAIL]
    assert [t.number for t in stale] == [1] and "error" not in stale[0].user_attrs
    assert len(trials) == 4


def test_two_workers_share_one_study(tmp_path):
    sw = tmp_path / "sw"
    args = sweep_args(sw, 4)
    (sw).mkdir()
    optuna.create_study(study_name="test", storage=f"sqlite:///{sw}/study.db", direction="maximize")
    workers = [popen(args, tmp_path, f"worker{i}") for i in range(2)]
    for w in workers:
        w.wait(timeout=600)
    outs = [output(w) for w in workers]
    for w, out in zip(workers, outs):
        assert w.returncode == 0, out[-3000:]
    trials = load(sw).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    numbers = [t.number for t in complete]
    assert len(set(numbers)) == 4
    assert all((sw / f"trial_{n}" / "metrics.json").is_file() for n in numbers)
    # both workers did part of the work
    assert all("trial" in out and "COMPLETE" in out for out in outs)


def test_joblib_launcher_prunes_in_worker_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    res = thaw_train(sweep_args(tmp_path / "sw", 2, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                "hydra.sweeper.n_jobs=2",
                                "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
                                "+hydra.sweeper.pruner.lower=1.01", "~hydra.sweeper.pruner.n_startup_trials",
                                "~hydra.sweeper.pruner.n_warmup_steps"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = load(tmp_path / "sw").get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)


def test_ctrl_c_ends_cleanly_and_keeps_the_study(tmp_path):
    sw = tmp_path / "sw"
    proc = popen(sweep_args(sw, 5), tmp_path)

    def first_epoch_logged():
        log = sw / "trial_0" / "train.log"
        return log.exists() and "phase head" in log.read_text()
    try:
        wait_for(first_epoch_logged, 300, "trial 0 to train")
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
        out = output(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out
    trials = load(sw).get_trials()
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert trials[0].state == TrialState.FAIL and "interrupted" in trials[0].user_attrs
    assert (sw / "optimization_results.yaml").is_file()
