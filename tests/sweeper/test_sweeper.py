"""The thaw sweeper for real: Optuna on SQLite files, Hydra launchers, real worker processes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import thaw_train
from optuna.trial import TrialState

from thaw.sweeper.failures import is_surplus

# A trial here takes seconds: 32 px, 32 images, no model file.
TINY = [
    "experiment=tiny",
    "backbone.image_size=32",
    "data.num_train=32",
    "data.num_val=16",
    "data.batch_size=16",
    "trainer.save_model=false",
]


# for tests about the sweep, not the training: BatchNorm in inference mode makes the base a fixed
# function, so trials train on cached activations (a trial's steps trace in ~1/4 the time)
STUDY_ONLY = ["backbone.batchnorm=inference"]


def sweep_args(sweep_dir, n_trials, *extra):
    """The depth_lr preset on tiny trials: depth limited to the top 3 blocks so each trial stays
    small (the preset's lr.base interval is kept), and no confirmation runs after the search unless
    a test asks for them (`hydra.sweeper.confirm.top_k=N` in `extra`)."""
    confirm = (
        []
        if any(e.startswith("hydra.sweeper.confirm.top_k=") for e in extra)
        else ["hydra.sweeper.confirm.top_k=0"]
    )
    return [
        "--multirun",
        *TINY,
        "sweep=depth_lr",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.study_name=test",
        "unfreeze.depth=range(0,4)",
        *confirm,
        *extra,
    ]


def load(sweep_dir):
    return optuna.load_study(study_name="test", storage=f"sqlite:///{sweep_dir}/study.db")


def by_state(study):
    out = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.state, []).append(t)
    return out


def popen(args, cwd, name="worker"):
    """A real sweep process in its own session; output goes to a file (a full pipe would block
    it)."""
    out = open(cwd / f"{name}.out", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "thaw.commands.train", *args],
        cwd=cwd,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
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


FAKE_KEY = "thawtestsecret0123456789abcdef0123456789ab"


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """One real 3-trial sweep with W&B offline and a recognisable fake API key in the
    environment."""
    tmp = tmp_path_factory.mktemp("smoke_sweep")
    res = thaw_train(
        sweep_args(
            tmp / "sw",
            3,
            "data.num_test=16",
            "trainer.save_model=true",
            "logger.mode=offline",
            "hydra.sweeper.confirm.top_k=3",  # the preset's confirmation, W&B runs and files
        ),
        cwd=tmp,
        env={"WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": ""},
    )
    return res, tmp / "sw"


def test_smoke_sweep_completes_with_results(smoke_sweep):
    res, sw = smoke_sweep
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = load(sw)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # the chosen trial, and the baseline when it is another, are evaluated on the test split
    evaluated = {study.user_attrs["test_eval"]["trial"]}
    evaluated |= {study.user_attrs.get("test_eval_baseline", {}).get("trial")} - {None}
    for t in trials:
        assert 0 <= t.params["unfreeze.depth"] <= 3
        assert 1e-5 <= t.params["lr.base"] <= 1e-2
        run_dir = sw / f"trial_{t.number}"
        assert t.user_attrs["run_dir"] == str(run_dir)
        m = json.loads((run_dir / "metrics.json").read_text())
        assert m["status"] == "complete" and m["objective"] == t.value
        assert m["unfreeze"]["depth"] == t.params["unfreeze.depth"]
        assert m["lr"]["base"] == pytest.approx(t.params["lr.base"])
        # the pruner's noise margin is two standard errors of this many validation images
        assert t.user_attrs["num_val"] == m["num_val"] > 0
        # one intermediate value per epoch of both phases
        assert sorted(t.intermediate_values) == [0, 1]
        # trials never look at the test split ...
        assert ("test_accuracy" in m) == (t.number in evaluated)
    results = yaml.safe_load((sw / "optimization_results.yaml").read_text())
    assert results["trial_counts"]["COMPLETE"] == 3
    # ... only the chosen trial (and the baseline) is evaluated on it, once, after the sweep: its
    # model.keras on the 16 test images, as computed here by hand
    assert results["best_trial"]["number"] == study.user_attrs["test_eval"]["trial"]
    best_dir = sw / f"trial_{results['best_trial']['number']}"
    accuracy, correct = _test_accuracy_by_hand(best_dir)
    assert results["best_trial"]["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert (
        study.user_attrs["test_eval"]["correct"] == correct
    )  # image by image: this model, not another
    assert results["best_trial"]["num_test"] == 16
    # one progress line per trial, counted like the study, with the best so far and time left
    out = res.stdout + res.stderr
    for k in (1, 2, 3):
        assert f"sweep: {k}/3 trials done (COMPLETE {k}); best " in out
    assert "about 0s left" in out
    # each trial's time breakdown is on its trial and in its log line; only the first trial of this
    # in-process sweep paid TensorFlow's import
    imports = [t.user_attrs["time_breakdown"]["import"] for t in trials]
    assert imports[0] > 1 and imports[1:] == [0, 0]
    assert out.count("; time ") == 3 and "compute " in out
    assert results["best_value"] == study.best_value
    assert results["best_params"] == study.best_params
    assert "best trial" in res.stderr + res.stdout


def _test_accuracy_by_hand(run_dir):
    """The run's model.keras on its config's test split: sign of the logit against the label."""
    import keras
    import numpy as np
    from omegaconf import OmegaConf

    from thaw import data as data_mod

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    ds = data_mod.load(cfg.data, int(cfg.backbone.image_size), int(cfg.trainer.seed))
    assert len(ds.test) == 16 and set(ds.test.labels.tolist()) == {0, 1}
    logits = keras.saving.load_model(run_dir / "model.keras", compile=False).predict(
        ds.test.images.astype("float32"), verbose=0
    )
    correct = (logits[:, 0] > 0).astype(int) == ds.test.labels
    return float(np.mean(correct)), [int(c) for c in correct]


def _wandb_records(run_dir):
    """The records of an offline W&B run, read back with W&B's own `wandb leet inspect`."""
    wandb_bin = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_bin), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "No such option '--json'" in out.stderr or "No such command 'leet'" in out.stderr:
        pytest.skip("reading an offline run back needs wandb >= 0.31 (`wandb leet inspect --json`)")
    assert out.returncode == 0, out.stderr[-2000:]
    recs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summ = subprocess.run(
        [str(wandb_bin), "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return recs, json.loads(summ.stdout)


def test_one_wandb_run_per_trial_grouped_by_study(smoke_sweep):
    res, sw = smoke_sweep
    assert res.returncode == 0
    study = load(sw)
    for t in study.get_trials():
        runs = list((sw / f"trial_{t.number}" / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # under the trial's run dir, one run per trial
        recs, summary = _wandb_records(runs[0])
        run_rec = next(r["run"] for r in recs if r.get("type") == "run")
        assert run_rec["run_group"] == "test" and run_rec["job_type"] == "trial"
        assert run_rec.get("display_name") == f"trial-{t.number}"
        cfg = summary["config"]
        assert cfg["unfreeze"]["depth"] == t.params["unfreeze.depth"]
        assert cfg["lr"]["base"] == pytest.approx(t.params["lr.base"])
        history = [r["history"]["item"] for r in recs if r.get("type") == "history"]
        assert [h["phase"] for h in history] == ["head", "finetune"]
        assert all("val_accuracy" in h and "lr" in h and "trainable_params" in h for h in history)
        assert summary["summary"]["state"] == "COMPLETE"
        assert summary["summary"]["objective"] == pytest.approx(t.value)
        assert summary["state"] == "finished"
    summaries = list(sw.glob("wandb/offline-run-*"))
    assert len(summaries) == 1
    recs, _ = _wandb_records(summaries[0])
    assert next(r["run"] for r in recs if r.get("type") == "run")["job_type"] == "sweep-summary"


def test_no_secret_in_any_output_file(smoke_sweep):
    res, sw = smoke_sweep
    assert res.returncode == 0
    assert FAKE_KEY not in res.stdout + res.stderr
    checked = 0
    for path in sw.rglob("*"):
        if path.is_file():
            checked += 1
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert checked > 20


def test_no_secret_when_auto_mode_goes_online_with_the_key(tmp_path):
    """logger.mode=auto with a key and no WANDB_MODE: W&B starts online with the key, against an
    address where nothing listens (nothing is sent anywhere), fails, and the run falls back to
    offline. The key is in no output and no file: the run's, W&B's config, cache and data dirs."""
    wandb_home = tmp_path / "wandb_home"
    res = thaw_train(
        [
            *TINY,
            *STUDY_ONLY,
            "logger=wandb",
            "logger.init_timeout=10",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env={
            "WANDB_API_KEY": FAKE_KEY,
            "WANDB_MODE": "",
            "WANDB_BASE_URL": "http://127.0.0.1:9",
            "WANDB_CONFIG_DIR": str(wandb_home / "config"),
            "WANDB_CACHE_DIR": str(wandb_home / "cache"),
            "WANDB_DATA_DIR": str(wandb_home / "data"),
        },
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert (
        "W&B online failed" in out and "127.0.0.1:9" in out and "falling back to offline" in out
    )  # it went online
    assert len(list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert FAKE_KEY not in out
    checked = 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            checked += 1
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert checked > 10


def test_report_is_self_contained_with_plots(smoke_sweep):
    res, sw = smoke_sweep
    assert res.returncode == 0
    page = (sw / "report.html").read_text()
    for slug in ("history", "importance", "depth", "lr", "intermediate"):
        assert f'id="plot-{slug}"' in page, slug
        assert (sw / "report_png" / f"{slug}.png").stat().st_size > 5000
    from plotly.offline import get_plotlyjs

    assert get_plotlyjs() in page  # plotly.js inline: opens from disk, no network
    rest = page.replace(get_plotlyjs(), "")
    assert not re.search(r"<script[^>]*\bsrc=", rest) and "cdn.plot.ly" not in rest
    assert page.count("<tr class='complete'>") == 3


def test_report_renders_in_headless_chromium(smoke_sweep, tmp_path):
    from browser import screenshot

    res, sw = smoke_sweep
    shot = tmp_path / "report.png"
    stderr = screenshot(f"file://{sw / 'report.html'}", shot, tmp_path / "profile")
    assert shot.is_file(), stderr[-2000:]
    import numpy as np
    import tensorflow as tf

    img = tf.io.decode_png(shot.read_bytes()).numpy()[..., :3].astype(int)
    # plots rendered: many distinct colours and plenty of non-white pixels, not an empty page
    non_white = (img.sum(axis=2) < 720).mean()
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    assert non_white > 0.05 and colours > 200, (non_white, colours)


def test_report_command_and_html_escaping(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(
        study_name="<script>alert(1)</script>", storage=storage, direction="maximize"
    )
    for i in range(3):
        t = study.ask({"unfreeze.depth": optuna.distributions.IntDistribution(0, 5)})
        study.tell(t, 0.5 + 0.1 * i)
    t = study.ask()
    t.set_user_attr("error", "<img src=x onerror=alert(2)>")
    study.tell(t, state=TrialState.FAIL)
    r = subprocess.run(
        [str(Path(sys.executable).with_name("thaw-report")), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "report.html").read_text()
    assert (
        "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    )
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    r = subprocess.run(
        [str(Path(sys.executable).with_name("thaw-report")), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_pruner_prunes_and_keeps_intermediate_values(tmp_path):
    res = thaw_train(
        sweep_args(
            tmp_path / "sw", 2, "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01"
        ),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = load(tmp_path / "sw").get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert list(t.intermediate_values) == [0]  # pruned after the first (head) epoch
        run_dir = tmp_path / "sw" / f"trial_{t.number}"
        m = json.loads((run_dir / "metrics.json").read_text())
        assert m["status"] == "pruned" and len(m["history"]) == 1
        assert "pruned" in (run_dir / "train.log").read_text()


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_the_sweep_logs_and_records_the_trials_after_the_pruners_start_up(tmp_path):
    """The default pruner's 3 start-up trials and one more: the sweep says how the later one ended,
    in its log and in optimization_results.yaml."""
    res = thaw_train(sweep_args(tmp_path / "sw", 4, *STUDY_ONLY), cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    trials = load(tmp_path / "sw").get_trials()
    fourth = trials[3].state
    after = yaml.safe_load((tmp_path / "sw" / "optimization_results.yaml").read_text())[
        "after_startup"
    ]
    assert after["startup_trials"] == 3 and after["later_trials"] == 1
    assert after["later_complete"] == (fourth == TrialState.COMPLETE)
    assert after["later_pruned"] == (fourth == TrialState.PRUNED)
    assert after["best_found_after_startup"] == (load(tmp_path / "sw").best_trial.number == 3)
    where = "after the start-up" if after["best_found_after_startup"] else "among the start-up"
    line = (
        f"search: {after['later_complete']} of 1 trials after the pruner's 3 start-up trials "
        f"completed ({after['later_pruned']} pruned); the best trial was found {where}"
    )
    assert line in out, out[-3000:]


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_the_last_epoch_is_recorded_never_pruned(tmp_path):
    """A pruner that would stop every trial from step 1 on: step 1 is the run's last epoch (tiny:
    1 + 1), where stopping saves nothing, so the trials complete with both values recorded."""
    res = thaw_train(
        sweep_args(
            tmp_path / "sw",
            2,
            "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=1.01",
            "hydra.sweeper.pruner.n_warmup_steps=1",
        ),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = load(tmp_path / "sw").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(sorted(t.intermediate_values) == [0, 1] for t in trials)


def test_failing_trial_is_fail_and_the_sweep_goes_on(tmp_path):
    res = thaw_train(
        [
            "--multirun",
            *TINY,
            "sweep=depth_lr",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=test",
            "hydra/sweeper/sampler=bruteforce",
            "hydra.sweeper.baseline=false",
            "hydra.sweeper.confirm.top_k=0",
            "unfreeze.depth=choice(1,99)",
            "lr.base=1e-3",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    states = by_state(load(tmp_path / "sw"))
    assert len(states[TrialState.COMPLETE]) == 1 and len(states[TrialState.FAIL]) == 1
    failed = states[TrialState.FAIL][0]
    assert failed.params["unfreeze.depth"] == 99
    assert "unfreeze.depth" in failed.user_attrs["error"]


def test_too_many_failures_stop_the_sweep(tmp_path):
    res = thaw_train(
        [
            "--multirun",
            *TINY,
            "sweep=depth_lr",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
            "hydra.sweeper.n_trials=5",
            "hydra.sweeper.study_name=test",
            "hydra.sweeper.max_failure_rate=0.0",
            "hydra.sweeper.baseline=false",
            "unfreeze.depth=choice(50,99)",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 1
    assert "max_failure_rate" in res.stdout + res.stderr
    assert len(load(tmp_path / "sw").get_trials()) == 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["lr.base=interval(1e-2,1e-5)"], "empty interval"),
        (["hydra.sweeper.n_trials=0"], "n_trials"),
        (["hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/none"], "hydra.sweeper.storage"),
        (["lr.base=-1"], "lr.base"),
        (
            ["hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.n_startup_trails=3"],
            "n_startup_trails",
        ),
        (["hydra/sweeper/pruner=patient"], "hydra.sweeper.pruner.patience"),
        (
            ["trainer.objective=test_accuracy"],
            "trainer.objective: test_accuracy is not measured by sweep trials",
        ),
        (
            ["hydra/sweeper/sampler=grid", "lr.base=interval(1e-4,1e-3)"],
            "grid sampler needs discrete values",
        ),
    ],
)
def test_bad_sweep_input_is_one_line_exit_2(tmp_path, args, needle):
    res = thaw_train(
        ["--multirun", *TINY, "sweep=depth_lr", f"hydra.sweep.dir={tmp_path / 'sw'}", *args],
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("thaw-train: error")]
    assert len(lines) == 1 and needle in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_save_models_best_keeps_only_the_best_model_across_a_resume(tmp_path):
    """Objective trainable_params (minimized): every depth gives a distinct value, so the best is
    one trial and changes as deeper-or-shallower draws arrive; the grid walks the depths in random
    order."""
    sw = tmp_path / "sw"
    for n in (2, 4):  # the second command resumes the study to 4 trials
        res = thaw_train(
            sweep_args(
                sw,
                n,
                "hydra.sweeper.save_models=best",
                "trainer.save_model=true",
                "trainer.objective=trainable_params",
                "hydra/sweeper/sampler=grid",
                "unfreeze.depth=choice(0,1,2,3)",
                "lr.base=1e-3",
                "hydra.sweeper.sampler.seed=3",
            ),
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        study = load(sw)
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert len(complete) == n
        models = sorted(p.parent.name for p in sw.glob("trial_*/model.keras"))
        assert len({t.value for t in complete}) == n  # distinct values: "the best" is one trial
        assert study.best_trial.params["unfreeze.depth"] == min(
            t.params["unfreeze.depth"] for t in complete
        )
        assert models == [f"trial_{study.best_trial.number}"]  # the best's model, and only it
        assert all((sw / f"trial_{t.number}" / "metrics.json").is_file() for t in complete)
    results = yaml.safe_load((sw / "optimization_results.yaml").read_text())
    assert (
        results["best_trial"]["run_dir"] == f"trial_{study.best_trial.number}"
    )  # relative: the dir can move
    assert (sw / results["best_trial"]["run_dir"] / "model.keras").is_file()


def _journal_study(path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(
        study_name="test", storage=JournalStorage(JournalFileBackend(str(path)))
    )


@pytest.mark.parametrize("storage", ["sqlite", pytest.param("journal", marks=pytest.mark.slow)])
def test_resume_after_kill_9_reaches_exactly_n_trials(tmp_path, storage):
    """Every storage the README offers survives a killed worker (Optuna's journal has no heartbeat:
    thaw's own, a file touched per trial beside the journal, finds the dead trial). PostgreSQL:
    tests/test_postgres.py runs the same check."""
    journal = tmp_path / "study.log"
    if storage == "journal":
        kill_9_then_resume(
            tmp_path, [f"hydra.sweeper.storage={journal}"], lambda: _journal_study(journal), journal
        )
    else:
        kill_9_then_resume(
            tmp_path, [], lambda: load(tmp_path / "sw"), tmp_path / "sw" / "study.db"
        )


def kill_9_then_resume(tmp_path, storage_args, open_study, marker=None):
    """kill -9 a 3-trial sweep in trial 1, right after its head phase's checkpoint (thaw's test-only
    fault hook sends the real signal at that exact point), run the same command again: exactly 3
    COMPLETE trials, the dead one FAILed as stale and retried with its params (max_retry=1), the
    retry continuing the dead trial's checkpoint at epoch 2."""
    sw = tmp_path / "sw"
    args = sweep_args(
        sw,
        3,
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=4",
        "hydra.sweeper.max_retry=1",
        "hydra.sweeper.confirm.top_k=0",
        *storage_args,
    )
    load = lambda _sw: open_study()  # noqa: E731
    res = thaw_train(
        args,
        cwd=tmp_path,
        env={"THAW_TEST_FAULTS": "1", "THAW_KILL_AFTER_CHECKPOINT": "trial_1/head:end"},
    )
    assert res.returncode == -signal.SIGKILL, res.stdout[-3000:] + res.stderr[-3000:]
    assert marker is None or marker.exists()
    assert (sw / "trial_1" / "checkpoint.npz").exists()
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
    # max_retry=1: the dead worker's trial is re-run with the same params
    from optuna.storages import RetryFailedTrialCallback

    retried = [t for t in trials if RetryFailedTrialCallback.retried_trial_number(t) == 1]
    assert len(retried) == 1 and retried[0].params == stale[0].params
    assert retried[0].state == TrialState.COMPLETE
    # ... from the dead trial's checkpoint: epoch 1 is not trained again, the history is continuous,
    # and the trial has both epochs' values, each reported once
    dead_dir, retry_dir = (
        Path(stale[0].user_attrs["run_dir"]),
        Path(retried[0].user_attrs["run_dir"]),
    )
    record = json.loads((retry_dir / "metrics.json").read_text())
    assert record["resumed"][0]["after_epoch"] == 1
    assert [r["epoch"] for r in record["history"]] == [1, 2]
    assert record["history"][0] == json.loads((dead_dir / "metrics.json").read_text())["history"][0]
    assert "resuming from" in (retry_dir / "train.log").read_text()
    assert sorted(retried[0].intermediate_values) == [0, 1]
    assert retried[0].intermediate_values[0] == record["history"][0]["val_accuracy"]
    assert not (retry_dir / "checkpoint.npz").exists()  # a completed run deletes its checkpoint
    # the resumed, seeded sampler does not replay the first run's draws
    fresh = [t for t in trials if t.number not in (1, retried[0].number)]
    assert len({tuple(sorted(t.params.items())) for t in fresh}) == len(fresh)
    assert (sw / "report.html").is_file()  # the end-of-sweep report reads this storage too


@pytest.mark.slow  # default-run budget; `-m slow` runs it
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
    # each trial ran in exactly one of the workers (a worker that starts late may find none left)
    ran = [{int(n) for n in re.findall(r"trial (\d+) COMPLETE value=", out)} for out in outs]
    assert not ran[0] & ran[1] and ran[0] | ran[1] == set(numbers), ran


def test_joblib_launcher_prunes_in_worker_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    res = thaw_train(
        sweep_args(
            tmp_path / "sw",
            2,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_jobs=2",
            "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=1.01",
        ),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = load(tmp_path / "sw").get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)


def test_a_job_the_launcher_returns_nothing_for_fails_its_trial_and_the_sweep_goes_on(tmp_path):
    """A real Hydra launcher (tests/apps/plugins) that loses the first job: launch() returns None
    for it without raising. That trial FAILs with a reason, the others run, the sweep ends
    normally."""
    plugins = Path(__file__).parents[1] / "apps" / "plugins"
    res = thaw_train(
        sweep_args(
            tmp_path / "sw",
            2,
            "logger=none",
            "hydra.sweeper.confirm.top_k=0",
            "hydra.launcher._target_=hydra_plugins.thaw_test_launcher.LosesFirstJobLauncher",
        ),
        cwd=tmp_path,
        env={
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(plugins), os.environ.get("PYTHONPATH")])
            )
        },
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = load(tmp_path / "sw").get_trials()
    lost = trials[0]
    assert (
        lost.state == TrialState.FAIL
        and lost.user_attrs["error"] == "the launcher returned no result for this job"
    )
    assert not (tmp_path / "sw" / "trial_0").exists()  # never ran
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE]
    assert "trials done (FAIL 1); no best yet" in res.stdout + res.stderr  # counted as it happened
    assert "UnboundLocalError" not in res.stdout + res.stderr


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_ctrl_c_ends_cleanly_and_keeps_the_study(tmp_path, sig):
    """The real signal, sent at an exact point of trial 0 (once its head phase is on disk) by the
    test-only fault hook, so trial 0 is the one in flight however fast the machine is."""
    sw = tmp_path / "sw"
    at = f"{sig.name.removeprefix('SIG')}@trial_0/head:end"
    res = thaw_train(
        sweep_args(sw, 5),
        cwd=tmp_path,
        env={"THAW_TEST_FAULTS": "1", "THAW_KILL_AFTER_CHECKPOINT": at},
    )
    out = res.stdout + res.stderr
    assert res.returncode == 130, out[-3000:]
    assert "Traceback" not in out
    trials = load(sw).get_trials()
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert trials[0].state == TrialState.FAIL and "interrupted" in trials[0].user_attrs
    assert (sw / "optimization_results.yaml").is_file()


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_a_trial_whose_config_cannot_compose_fails_and_the_sweep_goes_on(tmp_path):
    res = thaw_train(
        [
            "--multirun",
            *TINY,
            "sweep=depth_lr",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=test",
            "hydra/sweeper/sampler=bruteforce",
            "head=choice(linear,no_such_head)",
            "unfreeze.depth=1",
            "lr.base=1e-3",
            "hydra.sweeper.baseline=false",
            "hydra.sweeper.confirm.top_k=0",
        ],
        cwd=tmp_path,
    )  # depth fixed
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    states = by_state(load(tmp_path / "sw"))
    assert len(states[TrialState.COMPLETE]) == 1 and len(states[TrialState.FAIL]) == 1
    assert "no_such_head" in states[TrialState.FAIL][0].user_attrs["error"]


def test_workers_creating_a_new_storage_at_once_do_not_fail(tmp_path):
    """Several processes opening a brand-new SQLite study file race on its schema; all must
    succeed."""
    import threading

    from thaw.sweeper.storage import make_storage

    url, errors = f"sqlite:///{tmp_path}/new.db", []

    def open_it():
        try:
            make_storage(url, 10, 60)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_two_workers_confirm_once_and_share_one_baseline(tmp_path):
    """The baseline is created RUNNING by one worker (an enqueued WAITING trial can be popped by two
    workers at once on SQLite), and one worker runs the confirmation: every run dir is written
    once."""
    sw = tmp_path / "sw"
    args = sweep_args(
        sw, 4, "hydra.sweeper.confirm.top_k=1", "hydra.sweeper.confirm.seeds=1", *STUDY_ONLY
    )
    sw.mkdir()
    optuna.create_study(study_name="test", storage=f"sqlite:///{sw}/study.db", direction="maximize")
    workers = [popen(args, tmp_path, f"worker{i}") for i in range(2)]
    for w in workers:
        w.wait(timeout=600)
    outs = [output(w) for w in workers]
    assert all(w.returncode == 0 for w in workers), outs[0][-3000:] + outs[1][-3000:]
    study = load(sw)
    # both workers may ask for the last slot at once: the later one gives its trial back unrun
    # (FAIL, marked surplus, no run dir: core._surplus) and it is not counted
    surplus = [t for t in study.get_trials() if is_surplus(t)]
    assert all(t.state == TrialState.FAIL and not t.intermediate_values for t in surplus)
    assert not any((sw / f"trial_{t.number}").exists() for t in surplus)
    trials = [t for t in study.get_trials() if not is_surplus(t)]
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4 and len(trials) == 4
    assert [t.number for t in trials if t.user_attrs.get("baseline")] == [0]
    assert (
        sum("trial 0: unfreeze.depth=0" in out for out in outs) == 1
    )  # one worker ran the baseline
    runs = study.user_attrs["confirmation"]
    assert (
        not runs["errors"] and sum(len(v) for v in runs["runs"].values()) == 2
    )  # baseline + top 1, once each
    assert sum("confirming:" in out for out in outs) == 1
    # the other worker leaves the answer to the confirming one: one verdict, over 2 seeds
    assert sum("confirmation: left to the worker" in out for out in outs) == 1
    assert sum("verdict:" in out for out in outs) == 1
    res = yaml.safe_load((sw / "optimization_results.yaml").read_text())
    assert "confirmation_pending" not in res and "over 2 seeds" in res["verdict"], res["verdict"]
    # two workers started together draw different trials (a second baseline candidate, made
    # when both workers create one at once, runs the baseline's params as a search trial)
    drawn = [t.params for t in trials if t.params != trials[0].params]
    assert len({tuple(sorted(p.items())) for p in drawn}) == len(drawn)


def test_a_worker_that_finds_every_confirmation_run_done_leaves_the_answer_to_its_owner(tmp_path):
    """The owner may still be testing the winner and writing the answer when a slower worker
    finds nothing left to confirm: that worker must not write a second verdict beside it. Once
    the owner is gone, the same command writes the answer itself."""
    import socket

    sw = tmp_path / "sw"
    args = sweep_args(
        sw, 2, "hydra.sweeper.confirm.top_k=1", "hydra.sweeper.confirm.seeds=1", *STUDY_ONLY
    )
    first = thaw_train(args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        load(sw).set_user_attr("confirmation_owner", f"{socket.gethostname()}:{owner.pid}")
        late = thaw_train(args, cwd=tmp_path)
    finally:
        owner.kill()
        owner.wait()
    out = late.stdout + late.stderr
    assert late.returncode == 0, out[-3000:]
    assert f"confirmation: left to the worker {socket.gethostname()}:{owner.pid}" in out
    assert "verdict:" not in out and "confirming:" not in out
    again = thaw_train(args, cwd=tmp_path)  # the owner is dead: nothing waits on it
    out = again.stdout + again.stderr
    assert again.returncode == 0 and "verdict:" in out and "left to the worker" not in out, out


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")  # our own ask
def test_a_worker_with_no_slot_says_what_it_waits_for(tmp_path):
    """Another worker's trial holds the last of n_trials: this worker says so once (not a silent
    poll), and runs a trial itself once that one stops heartbeating and is failed as stale."""
    sw = tmp_path / "sw"
    sw.mkdir()
    storage = optuna.storages.RDBStorage(f"sqlite:///{sw}/study.db", heartbeat_interval=1)
    study = optuna.create_study(study_name="test", storage=storage, direction="maximize")
    foreign = study.ask()  # RUNNING in a worker that beats until this one starts waiting
    # a grace period well above the test's 0.5 s beat: a stall under load must not fail the
    # foreign trial before the worker has said what it waits for
    args = sweep_args(sw, 1, "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=10")
    worker = popen(args, tmp_path)
    t0 = time.time()
    while worker.poll() is None and "waiting:" not in output(worker) and time.time() - t0 < 180:
        storage.record_heartbeat(foreign._trial_id)
        time.sleep(0.5)
    worker.wait(timeout=300)
    out = output(worker)
    assert worker.returncode == 0, out[-3000:]
    lines = [line for line in out.splitlines() if "waiting:" in line]
    assert len(lines) == 1, out[-3000:]
    assert "trial 0, running in another worker, holds the last of n_trials=1" in lines[0]
    assert "no heartbeat for 10 s" in lines[0]
    states = by_state(load(sw))
    assert [t.number for t in states[TrialState.FAIL]] == [0]  # failed as stale
    assert len(states[TrialState.COMPLETE]) == 1 and TrialState.RUNNING not in states
