"""W&B runs match the study one to one (real thaw-train processes, W&B offline, Optuna on SQLite):
a run killed with kill -9 and run again is one W&B run with its whole history; every trial's summary
objective is the study's value, pruned and complete alike; the sweep-summary run carries the
report."""

import json
import signal

import optuna
import pytest
from conftest import thaw_train
from optuna.trial import TrialState
from wandb_files import offline_runs, read

from thaw.runtime.tracking import run_id

TINY = [
    "experiment=tiny",
    "backbone.image_size=32",
    "data.num_train=32",
    "data.num_val=16",
    "data.batch_size=16",
    "trainer.save_model=false",
    "logger=wandb",
    "logger.mode=offline",
]
# the conftest's "disabled" unset (logger.mode decides); and no W&B service of this test process
# (an in-process test started one): each thaw-train process starts its own, as a user's would
OFFLINE = {"WANDB_MODE": "", "WANDB_SERVICE": ""}


def test_unwritable_wandb_dir_warns_and_training_goes_on(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "logger.dir=/dev/null/wandb", f"hydra.run.dir={run}"]
    res = thaw_train(args, cwd=tmp_path, env=OFFLINE)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "W&B directory /dev/null/wandb cannot be created" in res.stdout + res.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and len(metrics["history"]) == 2  # both phases ran
    assert not (run / "wandb").exists()


def test_run_killed_and_resumed_is_one_wandb_run(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "trainer.head_epochs=2", "trainer.finetune_epochs=2", f"hydra.run.dir={run}"]
    killed = thaw_train(
        args,
        cwd=tmp_path,
        env={**OFFLINE, "THAW_TEST_FAULTS": "1", "THAW_KILL_AFTER_CHECKPOINT": "head:end"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(offline_runs(run / "wandb")) == 1  # the dead attempt's, unfinished
    again = thaw_train(args, cwd=tmp_path, env=OFFLINE)
    assert again.returncode == 0, again.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed"][0]["after_epoch"] == 2  # it did continue from the checkpoint

    files = offline_runs(run / "wandb")
    assert len(files) == 1, files  # one run for `wandb sync`, not one per attempt
    assert len(list((run / "wandb").glob("superseded-offline-run-*"))) == 1
    rec = read(files[0])
    first = next((run / "wandb").glob("superseded-offline-run-*/run-*.wandb"))
    assert first.name == files[0].name == f"run-{rec.run_id}.wandb"  # the same W&B run, continued
    # the whole history: the dead attempt's two head epochs replayed, then the two new ones
    assert [h["_step"] for h in rec.history] == [0, 1, 2, 3]
    assert [h["val_accuracy"] for h in rec.history] == pytest.approx(
        [r["val_accuracy"] for r in metrics["history"]]
    )
    assert rec.summary["objective"] == metrics["objective"]
    assert rec.summary["state"] == "COMPLETE" and "complete" in rec.tags
    assert rec.config["run_dir"] == str(run) and rec.exit_code == 0


def test_run_ids_are_stable_and_valid():
    a = run_id("depth_lr-cats_vs_dogs_local-1e6b950d", "t3")
    assert a == run_id("depth_lr-cats_vs_dogs_local-1e6b950d", "t3")
    assert a != run_id("depth_lr-cats_vs_dogs_local-1e6b950e", "t3")
    assert a != run_id("depth_lr-cats_vs_dogs_local-1e6b950d", "t4")
    weird = run_id("a/b:c?" + "x" * 100, "t12")
    assert len(weird) <= 64 and all(c.isalnum() or c in "-_" for c in weird)


def test_every_trials_wandb_run_says_what_the_study_recorded(tmp_path):
    """A 3-trial sweep where a pruner stops every trial before its last epoch: the baseline (1
    fine-tuning epoch: its last, never pruned) completes, the trials drawing 3 epochs are pruned."""
    sw = tmp_path / "sw"
    res = thaw_train(
        [
            "--multirun",
            *TINY,
            "sweep=depth_lr",
            f"hydra.sweep.dir={sw}",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.study_name=test",
            "unfreeze.depth=range(0,4)",
            "trainer.finetune_epochs=choice(1,3)",
            "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=1.01",
            "hydra.sweeper.pruner.n_warmup_steps=1",
            "hydra.sweeper.confirm.top_k=0",
        ],
        cwd=tmp_path,
        env=OFFLINE,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = optuna.load_study(study_name="test", storage=f"sqlite:///{sw}/study.db")
    trials = study.get_trials()
    states = {t.state for t in trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED}, states
    differ = []
    for t in trials:
        [path] = offline_runs(sw / f"trial_{t.number}" / "wandb")
        rec = read(path)
        assert rec.run_id == run_id("test", f"t{t.number}") and rec.name == f"trial-{t.number}"
        assert {f"trial-{t.number}", "test", t.state.name.lower()} <= set(rec.tags)
        assert rec.group == "test" and rec.job_type == "trial"
        if rec.summary.get("objective") != t.value:  # a pruned trial's: its last reported value
            differ.append(t.number)
        # the searched params at the top level, as typed, with their types
        assert rec.config["unfreeze.depth"] == t.params["unfreeze.depth"]
        assert isinstance(rec.config["unfreeze.depth"], int)
        assert rec.config["lr.base"] == t.params["lr.base"]
        assert rec.config["study"] == {"name": "test", "storage": f"sqlite:///{sw}/study.db"}
        assert rec.config["run_dir"] == t.user_attrs["run_dir"]
    assert differ == []

    [path] = offline_runs(sw / "wandb")
    summary = read(path)
    assert summary.job_type == "sweep-summary" and "sweep-summary" in summary.tags
    [report] = [a for a in summary.artifacts if a["type"] == "report"]
    assert "report.html" in report["files"]
    assert any(f.startswith("report_png/") for f in report["files"])
    assert summary.summary["verdict"] == study.user_attrs["verdict"]
    assert summary.summary["trials"] == {
        s.name.lower(): sum(t.state == s for t in trials) for s in states
    }


def test_a_retried_trial_is_its_own_run_linked_to_the_dead_ones(tmp_path, monkeypatch):
    """Trial 1 retries trial 0, whose worker died: its own W&B run (one per Optuna trial), carrying
    the dead trial's number and run id; pruned, its summary objective is the study's value."""
    from conftest import compose_cfg, dead_and_retried

    from thaw.runtime import tracking
    from thaw.sweeper.trial import TrialHandle

    monkeypatch.delenv("WANDB_MODE", raising=False)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=url, direction="maximize")
    dead, retry = dead_and_retried(url, "s")
    handle = TrialHandle(url, "s", retry.number, None, None, None)
    cfg = compose_cfg(["experiment=tiny", "logger=wandb", "logger.mode=offline"])
    tracker = tracking.start(cfg, tmp_path / "run", handle)
    tracker.log_epoch({"phase": "head", "val_accuracy": 0.61}, step=0)
    handle.report(0, 0.61)
    handle.prune("pruned after head epoch 1")
    tracker.finish({"pruned": "pruned after head epoch 1"}, "PRUNED")
    handle.close()
    [path] = offline_runs(tmp_path / "run" / "wandb")
    rec = read(path)
    assert rec.run_id == run_id("s", "t1") and {"retry", "trial-1", "s", "pruned"} <= set(rec.tags)
    assert rec.config["trial"]["retry_of"] == {"number": 0, "run_id": run_id("s", "t0")}
    value = optuna.load_study(study_name="s", storage=url).trials[1].value
    assert rec.summary["objective"] == value == 0.61


def test_online_without_a_key_never_waits_at_a_prompt_on_a_terminal(tmp_path):
    """On a terminal, W&B asks for an account and waits for ever; thaw runs offline instead."""
    import os
    import select
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    args = [a for a in TINY if not a.startswith("logger.mode")] + ["logger.mode=online"]
    master, terminal = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "thaw.commands.train", *args, f"hydra.run.dir={tmp_path / 'r'}"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=tmp_path,
        env=env,
    )
    os.close(terminal)
    out, deadline = b"", time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
    try:  # the terminal closed (the run's last output), or time is up
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("still running after 240 s: " + out.decode(errors="replace")[-1500:])
    os.close(master)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "Enter your choice" not in text and "no API key found" in text
    assert len(offline_runs(tmp_path / "r" / "wandb")) == 1
