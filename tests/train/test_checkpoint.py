"""Per-epoch checkpoints: a run killed with SIGKILL (a real one, at an exact point of the recipe via
THAW_KILL_AFTER_CHECKPOINT, which acts only with THAW_TEST_FAULTS=1) and re-run with the same run
dir continues at its next epoch and ends with the same per-epoch metrics as an uninterrupted run; a
bad checkpoint is refused, not trusted."""

import json
import logging
import re

import numpy as np
import pytest
from conftest import thaw_train
from omegaconf import OmegaConf

from thaw.train import checkpoint

RUN = [
    "experiment=tiny",
    "backbone.image_size=32",
    "data.num_train=64",
    "data.num_val=32",
    "data.batch_size=16",
    "trainer.head_epochs=2",
    "trainer.finetune_epochs=3",
    "trainer.deterministic=true",
    "logger=none",
    "trainer.save_model=false",
]
# the cached path: BatchNorm in inference mode makes the frozen prefix cacheable; flip augmentation
# trains on cached activations of augmented views (epoch e uses view (e + offset) % V)
CACHED = [
    "backbone.batchnorm=inference",
    "trainer.cache_features=true",
    "augment=flip",
    "trainer.augment_views=2",
]
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def attempt(run_dir, cwd, kill_at=None, extra=()):
    res = thaw_train(
        [*RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=cwd,
        env={"THAW_TEST_FAULTS": "1", "THAW_KILL_AFTER_CHECKPOINT": kill_at or ""},
    )
    expected = (
        0 if not kill_at else (130 if kill_at.startswith("TERM@") else -9)
    )  # SIGTERM: a clean stop
    assert res.returncode == expected, res.stderr[-2000:]
    return re.findall(r"\[(head|finetune)\] epoch (\d+)/", res.stdout + res.stderr)


def history(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def assert_same_epochs(a, b, tol=1e-5):
    assert [r["epoch"] for r in a["history"]] == [r["epoch"] for r in b["history"]]
    for ra, rb in zip(a["history"], b["history"]):
        assert ra["phase"] == rb["phase"]
        for k in METRICS:
            assert abs(ra[k] - rb[k]) <= tol, (ra["epoch"], k, ra[k], rb[k])


def kill_chain(tmp_path, points, extra=()):
    """An uninterrupted reference, then one run dir killed at each point in turn and finally let
    finish."""
    attempt(tmp_path / "ref", tmp_path, extra=extra)
    trained = []
    for point in [*points, None]:
        trained += attempt(tmp_path / "run", tmp_path, point, extra)
    ref, run = history(tmp_path / "ref"), history(tmp_path / "run")
    assert_same_epochs(ref, run)
    assert run["status"] == "complete" and run["objective"] == ref["objective"]
    # no epoch trained twice: a kill right after a checkpoint loses nothing
    assert sorted(int(e) for _, e in trained) == [1, 2, 3, 4, 5]
    assert not (tmp_path / "run" / checkpoint.NAME).exists()  # deleted once the run completed
    # wall time covers every attempt: at least all epochs' seconds, most of them earlier attempts'
    assert run["wall_seconds"] >= sum(r["seconds"] for r in run["history"])
    return run


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_killed_at_the_phase_switch_and_stopped_in_fine_tuning_ends_as_if_never_stopped(tmp_path):
    """On cached activations of augmented views: kill -9 at the phase switch, then SIGTERM right
    after fine-tuning epoch 1 (the next epoch is cut short mid-way, neither recorded nor
    checkpointed)."""
    run = kill_chain(tmp_path, ["head:end", "TERM@finetune:1"], CACHED)
    assert (
        run["phases"]["finetune"]["trained_on"] == "cached activations"
        and run["phases"]["head"]["augment_views"]
    )
    assert run["resumed"] == [
        {"after_epoch": 2, "phase": "head", "phase_ended": True},
        {"after_epoch": 3, "phase": "finetune", "phase_ended": False},
    ]


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_killed_at_every_point_of_the_recipe(tmp_path):
    run = kill_chain(tmp_path, ["head:1", "head:2", "head:end", "finetune:1", "finetune:2"])
    assert len(run["resumed"]) == 5


def _save_in_a_subprocess(tmp_path, env):
    """checkpoint.save (done=1, head phase) in a fresh process with `env`: how it ended."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from pathlib import Path; from omegaconf import OmegaConf; "
        "from thaw.train import checkpoint as c; "
        "cfg = OmegaConf.create({'name': 'x'}); "
        "k = c.Checkpoint('head', 1, False, [], {}, {}, {}, [np.zeros(2)], []); "
        "c.save(Path(sys.argv[1]), cfg, k, [np.zeros(2)]); print('survived')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_fault_injection_is_off_without_the_test_switch(tmp_path):
    """THAW_KILL_AFTER_CHECKPOINT alone (left in a user's environment) kills nothing; with
    THAW_TEST_FAULTS=1 the process dies by that signal right after that checkpoint is on disk."""
    off = _save_in_a_subprocess(
        tmp_path, {"THAW_KILL_AFTER_CHECKPOINT": "head:1", "THAW_TEST_FAULTS": ""}
    )
    assert off.returncode == 0 and "survived" in off.stdout, off.stderr[-2000:]
    on = _save_in_a_subprocess(
        tmp_path, {"THAW_KILL_AFTER_CHECKPOINT": "head:1", "THAW_TEST_FAULTS": "1"}
    )
    assert on.returncode == -9 and "survived" not in on.stdout, on.stderr[-2000:]
    assert (tmp_path / checkpoint.NAME).is_file()
    term = _save_in_a_subprocess(
        tmp_path, {"THAW_KILL_AFTER_CHECKPOINT": "TERM@head:1", "THAW_TEST_FAULTS": "1"}
    )
    assert term.returncode == -15, term.stderr[-2000:]
    other = _save_in_a_subprocess(
        tmp_path, {"THAW_KILL_AFTER_CHECKPOINT": "head:2", "THAW_TEST_FAULTS": "1"}
    )
    assert other.returncode == 0, other.stderr[-2000:]  # not that point of the recipe


@pytest.mark.parametrize(
    "env, needle",
    [
        (
            {"THAW_TEST_FAULTS": "1", "THAW_KILL_AFTER_CHECKPOINT": "TERN@head:1"},
            "THAW_KILL_AFTER_CHECKPOINT='TERN@head:1'",
        ),
        (
            {"THAW_TEST_FAULTS": "1", "THAW_KILL_AFTER_CHECKPOINT": "head1"},
            "THAW_KILL_AFTER_CHECKPOINT='head1'",
        ),
        (
            {"THAW_TEST_FAULTS": "yes", "THAW_KILL_AFTER_CHECKPOINT": "head:1"},
            "THAW_TEST_FAULTS='yes'",
        ),
    ],
)
def test_a_bad_fault_injection_value_is_refused_before_the_run(tmp_path, env, needle):
    """One line, exit 2, before anything is trained or written (it used to raise AttributeError at
    the first checkpoint, mid-training)."""
    out = tmp_path / "run"
    res = thaw_train([*RUN, f"hydra.run.dir={out}"], cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("thaw-train: error: ") and needle in err[0], (
        res.stderr
    )
    assert "Traceback" not in res.stderr and not out.exists()


def _cfg():
    return OmegaConf.create(
        {
            "name": "x",
            "trainer": {"seed": 1, "resume": "auto"},
            "lr": {"base": 0.1},
            "logger": {"name": "none"},
        }
    )


def _ckpt(best=None):
    model = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    return checkpoint.Checkpoint(
        "finetune",
        1,
        False,
        [{"phase": "head", "epoch": 1}],
        {"head": {}},
        {"value": 0.5, "step": 0},
        {"waited": 0},
        model,
        [np.zeros(2)],
        best,
    )


def test_checkpoint_round_trip_keeps_only_differing_best_weights(tmp_path):
    current = [np.zeros((2, 3), np.float32), np.ones(3, np.float32)]
    best = [
        np.full((2, 3), 7, np.float32),
        np.ones(3, np.float32),
    ]  # the second equals the current weight
    checkpoint.save(tmp_path, _cfg(), _ckpt(best), current)
    back = checkpoint.load(tmp_path, _cfg())
    assert (
        back.phase == "finetune"
        and back.done == 1
        and back.history == [{"phase": "head", "epoch": 1}]
    )
    assert np.array_equal(back.model[0], _ckpt().model[0]) and list(back.best_weights) == [0]
    assert np.array_equal(back.best_weights[0], best[0])
    assert back.position("head") == "skip" and back.position("finetune") == "continue"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_config"])
def test_a_bad_checkpoint_is_refused_with_one_line_and_kept_aside(tmp_path, caplog, damage):
    checkpoint.save(tmp_path, _cfg(), _ckpt(), [])
    path = tmp_path / checkpoint.NAME
    if damage == "truncated":  # a partial file (the write itself is atomic; a copy may not be)
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    cfg = _cfg()
    if damage == "other_config":
        cfg.lr.base = 0.2
    with caplog.at_level(logging.WARNING, logger="thaw.train"):
        assert checkpoint.load(tmp_path, cfg) is None
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "starting over" in lines[0] and "\n" not in lines[0]
    assert not path.exists() and (tmp_path / "checkpoint.refused.npz").is_file()  # nothing lost


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_a_run_with_a_corrupt_checkpoint_starts_over_and_completes(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / checkpoint.NAME).write_bytes(b"\x00" * 100)
    trained = attempt(tmp_path / "run", tmp_path)
    assert len(trained) == 5 and "resumed" not in history(tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.refused.npz").read_bytes() == b"\x00" * 100


def test_fingerprint_ignores_how_the_step_is_compiled_not_what_it_trains():
    """A checkpoint resumes across trainer.reuse_compiled / fused_optimizer (same optimizer
    variables) and across logger changes, and is refused for a change of what the run trains."""
    from conftest import compose_cfg

    base = checkpoint.fingerprint(compose_cfg(["experiment=tiny"]))
    free_keys = (
        "trainer.fused_optimizer=false",
        "trainer.reuse_compiled=false",
        "trainer.kept_fit_models=3",
        "logger=none",
    )
    for free in free_keys:
        assert checkpoint.fingerprint(compose_cfg(["experiment=tiny", free])) == base, free
    bound_keys = (
        "lr.base=0.01",
        "unfreeze.depth=2",
        "trainer.optimizer=sgd",
        "lr.layer_decay=0.5",  # issue 34's keys change what the fine-tuning phase trains
        "optimizer.weight_decay=0.01",
        "trainer.label_smoothing=0.1",
    )
    for bound in bound_keys:
        assert checkpoint.fingerprint(compose_cfg(["experiment=tiny", bound])) != base, bound


def test_a_second_refused_checkpoint_keeps_the_first_and_says_what_it_is(tmp_path, caplog):
    path = tmp_path / checkpoint.NAME
    for content in (b"first damaged file", b"second damaged file"):
        path.write_bytes(content)
        with caplog.at_level(logging.WARNING, logger="thaw.train"):
            assert checkpoint.load(tmp_path, _cfg()) is None
    assert (tmp_path / "checkpoint.refused.npz").read_bytes() == b"first damaged file"
    assert (tmp_path / "checkpoint.refused-2.npz").read_bytes() == b"second damaged file"
    said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert all("not a checkpoint file" in line for line in said) and len(said) == 2, said
