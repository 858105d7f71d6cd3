"""Trials of an in-process sweep reuse this process's classifier (initial weights restored in
memory) and its compiled fit models (optimizer state reset, traced step kept): the second trial of a
process computes exactly what it computes in a fresh process."""

import json

import pytest
from conftest import thaw_train

RUN = [
    "experiment=tiny",
    "backbone.image_size=32",
    "data.num_train=64",
    "data.num_val=32",
    "data.batch_size=16",
    "trainer.deterministic=true",
    "trainer.save_model=false",
    "logger=none",
    "head=mlp",
    "unfreeze.depth=3",
]
# images: a random base whose BatchNorm trains (no cache); features: BatchNorm in inference mode, so
# both phases fit cached activations (the head on pooled features, the top 3 blocks at their
# boundary)
PATHS = {
    "images": [],
    "features": ["backbone.batchnorm=inference", "trainer.cache_features=true"],
    # a cosine schedule (its start and length are variables in the kept step) on cached activations;
    # mixed precision (a LossScaleOptimizer, whose loss scale must go back to its initial value)
    "features-cosine": ["backbone.batchnorm=inference", "trainer.cache_features=true", "lr=cosine"],
    "images-mixed-precision": ["trainer.precision=mixed_float16"],
}


# only the features variant runs by default; the others with -m slow (default-run budget)
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.slow)
        if p in ("features-cosine", "images-mixed-precision", "images")
        else p
        for p in sorted(PATHS)
    ],
)
def test_a_trial_second_in_its_process_equals_it_in_a_fresh_process(tmp_path, path):
    sw, run = tmp_path / "sw", RUN + PATHS[path]
    res = thaw_train(
        [
            "--multirun",
            *run,
            "sweep=depth_lr",
            "hydra/sweeper/sampler=grid",
            "lr.base=choice(0.001,0.003)",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.confirm.top_k=0",  # the test reads the two trials only
            f"hydra.sweep.dir={sw}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    second = next(
        d
        for d in (sw / "trial_0", sw / "trial_1")
        if "reusing this process's" in (d / "train.log").read_text()
    )
    log = (second / "train.log").read_text()
    assert log.count("reusing this process's compiled step") == 2, (
        log
    )  # head and fine-tuning phases
    lr = next(
        line.split("=")[1]
        for line in (second / ".hydra" / "overrides.yaml").read_text().split()
        if line.startswith("lr.base=")
    )
    res = thaw_train([*run, f"lr.base={lr}", f"hydra.run.dir={tmp_path / 'fresh'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (second, tmp_path / "fresh"))
    assert [p["compiled"] for p in a["phases"].values()] == ["reused", "reused"]
    assert [p["compiled"] for p in b["phases"].values()] == ["new", "new"]
    assert {p["trained_on"] for p in a["phases"].values()} == {
        "images" if path.startswith("images") else "cached activations"
    }
    assert len(a["history"]) == len(b["history"]) == 2
    for ra, rb in zip(
        a["history"], b["history"]
    ):  # head (dropout, hidden layer) and fine-tuning alike
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert abs(ra[k] - rb[k]) <= 1e-6, (ra["epoch"], k, ra[k], rb[k])
    assert "reusing" not in (tmp_path / "fresh" / "train.log").read_text()


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_reuse_compiled_false_compiles_every_phase(tmp_path):
    sw = tmp_path / "sw"
    res = thaw_train(
        [
            "--multirun",
            *RUN,
            "trainer.reuse_compiled=false",
            "sweep=depth_lr",
            "hydra/sweeper/sampler=grid",
            "lr.base=choice(0.001,0.003)",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.confirm.top_k=0",  # the test reads the two trials only
            f"hydra.sweep.dir={sw}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for d in (sw / "trial_0", sw / "trial_1"):
        phases = json.loads((d / "metrics.json").read_text())["phases"]
        assert [p["compiled"] for p in phases.values()] == ["new", "new"]


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_a_later_run_of_a_process_evaluates_the_test_split_on_the_kept_step(tmp_path):
    """Runs of a plain multirun evaluate the test split each; later runs of the same classifier
    reuse the first one's compiled test step, also at another depth (another trainable set), and get
    what a fresh process gets."""
    run = RUN + ["data.num_test=48"]
    res = thaw_train(
        [
            "--multirun",
            *run,
            "unfreeze.depth=2,3",
            "lr.base=0.001,0.05",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = thaw_train(
        [*run, "unfreeze.depth=3", "lr.base=0.05", f"hydra.run.dir={tmp_path / 'fresh'}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [json.loads((tmp_path / "sw" / str(i) / "metrics.json").read_text()) for i in range(4)]
    fresh = json.loads((tmp_path / "fresh" / "metrics.json").read_text())
    assert [r["test_compiled"] for r in runs] + [fresh["test_compiled"]] == [
        "new",
        "reused",
        "reused",
        "reused",
        "new",
    ]
    overrides = (tmp_path / "sw" / "3" / ".hydra" / "overrides.yaml").read_text()
    assert "unfreeze.depth=3" in overrides and "lr.base=0.05" in overrides
    for k in ("test_accuracy", "test_loss"):
        assert abs(runs[3][k] - fresh[k]) <= 1e-6, (k, runs[3][k], fresh[k])
    assert (
        abs(runs[3]["test_loss"] - runs[2]["test_loss"]) > 1e-5
    )  # not the run before's (lr 0.001) result


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_kept_fit_models_bounds_what_a_process_keeps_for_its_next_run(tmp_path):
    """trainer.kept_fit_models=1 keeps one compiled fit model: the next run traces its head again
    where the default bound reuses it, and computes the same."""
    from conftest import compose_cfg

    from thaw.train.recipe import train
    from thaw.train.workspace import Workspace

    def run(name, *extra):
        train(compose_cfg([*RUN, *PATHS["features"], *extra]), tmp_path / name, workspace=ws)
        ws.end_run(keep_compiled=True)
        return json.loads((tmp_path / name / "metrics.json").read_text())

    ws = Workspace()
    first = run("first")
    assert ws.kept()["fit_models"] == 2  # the head's and depth 3's
    again = run("again")
    assert [p["compiled"] for p in again["phases"].values()] == ["reused", "reused"]
    bounded = run("bounded", "trainer.kept_fit_models=1")
    assert [p["compiled"] for p in bounded["phases"].values()] == ["new", "new"]
    assert ws.kept()["fit_models"] == 1
    for other in (again, bounded):  # reused or traced again, the same run computes the same
        for a, b in zip(first["history"], other["history"], strict=True):
            for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert abs(a[k] - b[k]) <= 1e-6, (k, a, b)
