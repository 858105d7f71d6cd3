"""A sweep answers the question it was asked: its study's identity, settings that change nothing,
the baseline, confirmation over seeds, and results that read the same from anywhere."""

import json
import shutil
import sys

import optuna
import pytest
import yaml
from conftest import TINY_RUN, compose_cfg, thaw_train
from imagefiles import make_folder
from optuna.distributions import IntDistribution

# A random-init MobileNetV2 at 32 px on a few real image files: seconds a trial.
FAST = [
    "experiment=tiny",
    "data=folder",
    "backbone.image_size=32",
    "data.batch_size=8",
    "logger=none",
    "unfreeze.depth=range(0,3)",
]


# for tests about the study, not the training: BatchNorm in inference mode makes the base a fixed
# function, so trials train on cached activations (a trial's two steps trace in ~1/4 the time)
STUDY_ONLY = ["backbone.batchnorm=inference"]


def folder(tmp_path, name, per_class):
    return make_folder(tmp_path / name, per_class=per_class)


def sweep(data, sweep_dir, *extra, study="q"):
    return [
        "--multirun",
        *FAST,
        "sweep=depth_lr",
        f"data.path={data}",
        f"hydra.sweep.dir={sweep_dir}",
        *([f"hydra.sweeper.study_name={study}"] if study else []),
        *extra,
    ]


def snapshot(root):
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


def test_other_data_aimed_at_a_study_is_refused_and_nothing_is_written(tmp_path):
    a, b = folder(tmp_path, "a", 6), folder(tmp_path, "b", 8)
    sw = tmp_path / "sw"
    quick = [
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.confirm.top_k=0",
        "trainer.save_model=false",
        *STUDY_ONLY,
    ]
    first = thaw_train(sweep(a, sw, *quick), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(sw)
    other = thaw_train(sweep(b, sw, *quick), tmp_path)
    assert other.returncode == 2, other.stderr[-3000:]
    lines = [ln for ln in other.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in other.stderr, other.stderr
    assert "data.path" in lines[0] and str(a) in lines[0] and str(b) in lines[0], lines[0]
    assert "hydra.sweeper.study_name" in lines[0] and "allow_config_change" in lines[0]
    assert snapshot(sw) == before  # nothing written or touched
    # the same command again resumes its own study
    again = thaw_train(sweep(a, sw, *quick), tmp_path)
    assert again.returncode == 0 and "1 of 1 trials done" in again.stdout + again.stderr, (
        again.stderr[-2000:]
    )
    # another search range is another question too (the same sweep dir, so it would resume)
    before = snapshot(sw)
    narrower = thaw_train(sweep(a, sw, *quick, "lr.base=tag(log, interval(1e-4, 1e-3))"), tmp_path)
    assert narrower.returncode == 2, narrower.stderr[-3000:]
    said = narrower.stderr
    assert "hydra.sweeper.params: " in said and "lr.base 0.0001..0.001 (log)" in said, said
    assert snapshot(sw) == before  # nothing written or touched
    # a deliberate change goes on, and the study records it
    allowed = thaw_train(
        sweep(b, sw, *quick, "hydra.sweeper.allow_config_change=true", "hydra.sweeper.n_trials=2"),
        tmp_path,
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    study = optuna.load_study(study_name="q", storage=f"sqlite:///{sw}/study.db")
    changes = study.user_attrs["identity_changes"]
    assert len(changes) == 1 and any(c.startswith("data.path") for c in changes[0]["changed"])
    assert study.user_attrs["identity"]["keys"]["data.path"] == json.dumps(str(b))


def test_default_study_names_do_not_collide(tmp_path):
    a, b = folder(tmp_path, "a", 6), folder(tmp_path, "b", 6)
    (b / "cats" / "cats.all.0.jpg").unlink()  # other content
    quick = [
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.confirm.top_k=0",
        "trainer.save_model=false",
        *STUDY_ONLY,
    ]
    for data in (a, b):
        args = [
            x
            for x in sweep(data, "unused", *quick, study=None)
            if not x.startswith("hydra.sweep.dir")
        ]
        res = thaw_train(args, tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    dirs = sorted(p.name for p in (tmp_path / "multirun" / "sweeps").iterdir())
    assert len(dirs) == 2 and all(
        d.startswith("depth_lr-tiny-") and len(d) == len("depth_lr-tiny-") + 8 for d in dirs
    ), dirs


def test_a_searched_key_the_config_ignores_is_refused(tmp_path):
    # experiment=smoke trains every block (unfreeze=all): searching the depth would run one model n
    # times
    res = thaw_train(
        [
            "--multirun",
            "experiment=smoke",
            "sweep=depth_lr",
            "logger=none",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
        ],
        tmp_path,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "unfreeze.depth" in lines[0] and "unfreeze=all" in lines[0], (
        res.stderr
    )
    assert not (tmp_path / "sw").exists()


def test_an_ignored_key_on_the_command_line_is_warned_about(capsys):
    from thaw.commands.train import precheck

    precheck(["experiment=smoke", "unfreeze.depth=999", "head.hidden_units=64", "lr.base=1e-3"])
    err = capsys.readouterr().err
    assert "warning: unfreeze.depth changes nothing here: unfreeze=all" in err
    assert "warning: head.hidden_units changes nothing here: head=linear" in err
    assert "lr.base" not in err  # a key that matters is not warned about
    precheck(["experiment=smoke", "lr.base=1e-3"])
    assert capsys.readouterr().err == ""


def test_settings_a_folder_or_a_sweep_makes_inert_are_warned_about(tmp_path, capsys):
    """Found by running thaw as a user: each of these was accepted without a word."""
    from thaw.commands.train import precheck

    folder = make_folder(tmp_path / "photos", layout="split", per_class=4)
    precheck(["experiment=tiny", "data=folder", f"data.path={folder}", "data.val_fraction=0.3"])
    assert f"data.val_fraction changes nothing here: {folder} has its own validation folder" in (
        capsys.readouterr().err
    )
    precheck(["experiment=tiny", "trainer.save_model=false", "trainer.export_h5=true"])
    assert "trainer.export_h5 changes nothing here: trainer.save_model=false" in (
        capsys.readouterr().err
    )
    sweep_ = ["--multirun", "experiment=tiny", "logger=none", "sweep=depth_lr"]
    precheck(
        [
            *sweep_,
            "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.confirm.top_k=0",
            "hydra.sweeper.confirm.seeds=5",
            "hydra.sweeper.heartbeat_interval=null",
            "hydra.sweeper.grace_period=5",
        ]
    )
    err = capsys.readouterr().err
    assert "hydra.sweeper.n_jobs changes nothing here: Hydra's basic launcher" in err
    assert "hydra.sweeper.confirm.seeds changes nothing here: hydra.sweeper.confirm.top_k=0" in err
    assert (
        "hydra.sweeper.grace_period changes nothing here: hydra.sweeper.heartbeat_interval" in err
    )
    # where they matter, no word
    flat = make_folder(tmp_path / "flat", per_class=4)
    precheck(["experiment=tiny", "data=folder", f"data.path={flat}", "data.val_fraction=0.3"])
    precheck(
        [
            *sweep_,
            "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.confirm.seeds=5",
            "hydra.sweeper.grace_period=50",
        ]
    )
    assert "changes nothing" not in capsys.readouterr().err


def test_pruning_without_a_per_epoch_objective_is_warned_about():
    from thaw.commands.sweep_hooks import ThawTrainSweep

    app = ThawTrainSweep()
    assert "pruning is off" in app.pruning_warning(
        compose_cfg(["experiment=tiny", "trainer.objective=wall_seconds"])
    )
    assert app.pruning_warning(compose_cfg(["experiment=tiny"])) is None


def test_baseline_confirmation_and_verdict_resume_and_never_feed_the_sampler(tmp_path):
    data = make_folder(tmp_path / "d", per_class=10)
    sw = tmp_path / "sw"
    args = sweep(
        data,
        sw,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.confirm.top_k=1",
        "hydra.sweeper.confirm.seeds=1",
        "data.test_fraction=0.5",
        "data.val_fraction=0.4",
    )
    res = thaw_train(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="q", storage=f"sqlite:///{sw}/study.db")
    trials = study.get_trials()
    assert len(trials) == 3  # confirmation runs are not Optuna trials: the sampler never sees them
    assert trials[0].params["unfreeze.depth"] == 0 and trials[0].user_attrs.get("baseline") is True
    assert trials[0].params["lr.base"] == pytest.approx(1e-3)  # the preset's rate
    runs = study.user_attrs["confirmation"]["runs"]
    top = min(
        (t for t in trials[1:] if t.state.name == "COMPLETE"), key=lambda t: (-t.value, t.number)
    )
    assert set(runs) == {"0", str(top.number)}  # the top trial (top_k=1) and the baseline
    # each trial says which phase its kept weights come from (the verdict reads it)
    for t in trials:
        if t.state.name == "COMPLETE":
            kept = json.loads((sw / f"trial_{t.number}" / "metrics.json").read_text())["kept_phase"]
            assert t.user_attrs["kept_phase"] == kept in ("head", "finetune")
    assert all(set(v) == {"43"} for v in runs.values())
    res_yaml = yaml.safe_load((sw / "optimization_results.yaml").read_text())
    assert res_yaml["baseline"]["number"] == 0 and set(res_yaml["baseline"]["values"]) == {42, 43}
    assert len(res_yaml["confirmed"]) == 2 and res_yaml["winner"] in {
        r["number"] for r in res_yaml["confirmed"]
    }
    gain = res_yaml["gain_vs_baseline"]
    assert gain["count"] == 2 and gain["low"] <= gain["mean"] <= gain["high"]
    best = res_yaml["best_trial"]
    assert best["number"] == res_yaml["winner"] and best["run_dir"] == f"trial_{best['number']}"
    reloaded = optuna.load_study(study_name="q", storage=f"sqlite:///{sw}/study.db")
    assert reloaded.user_attrs["chosen_trial"] == best["number"]  # the report marks this one
    assert f"Chosen trial <b>{best['number']}</b>" in (sw / "report.html").read_text()
    assert (
        0
        <= best["test_interval"]["low"]
        <= best["test_accuracy"]
        <= best["test_interval"]["high"]
        <= 1
    )
    assert "over 2 seeds" in res_yaml["verdict"] and "Test split" in res_yaml["verdict"]
    # what the answer cost: the search's trials summed and the confirmation's runs (2 of them)
    spent = res_yaml["seconds"]
    assert spent["search"] == pytest.approx(
        sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials), abs=0.2
    )
    assert 0 < spent["confirmation"] and spent["confirmation_share"] == pytest.approx(
        spent["confirmation"] / spent["search"], abs=1e-3
    )
    assert res_yaml["verdict"][:40] in (sw / "report.html").read_text().lower()
    assert list((sw / "confirm").iterdir()) and not list((sw / "confirm").rglob("model.keras"))
    # a resumed sweep continues confirmation where it stopped: only the new seed runs
    more = thaw_train(args[:-3] + ["hydra.sweeper.confirm.seeds=2", *args[-2:]], tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "confirming: 2 run(s)" in more.stdout + more.stderr, more.stderr[-3000:]
    study = optuna.load_study(study_name="q", storage=f"sqlite:///{sw}/study.db")
    assert len(study.get_trials()) == 3
    assert all(set(v) == {"43", "44"} for v in study.user_attrs["confirmation"]["runs"].values())


def test_confirmation_reuses_the_searchs_cached_views_unless_told_not_to(tmp_path, mnv2_weights):
    """Confirmation runs keep the search's augmented views (trainer.view_seed = the search's seed):
    read from the feature cache, not computed again; their own seed still changes the run."""
    data = make_folder(tmp_path / "d", per_class=10)
    sw = tmp_path / "sw"
    args = sweep(
        data,
        sw,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.confirm.top_k=1",
        "hydra.sweeper.confirm.seeds=1",
        "augment=flip",
        f"backbone.weights={mnv2_weights}",
        "trainer.augment_views=2",
        "trainer.cache_features=true",
    )
    res = thaw_train(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    def confirm_run(trial, seed):
        run = sw / "confirm" / f"trial_{trial}_seed_{seed}"
        resolved = yaml.safe_load((run / "resolved_config.yaml").read_text())
        return resolved["trainer"], json.loads((run / "metrics.json").read_text())

    trainer, metrics = confirm_run(0, 43)
    assert trainer["seed"] == 43 and trainer["view_seed"] == 42
    assert metrics["augment"]["seed"] == 42
    assert [p["views_computed"] for p in metrics["phases"].values()] == [False, False]
    base = json.loads((sw / "trial_0" / "metrics.json").read_text())
    assert base["augment"]["seed"] == 42 and base["phases"]["head"]["views_computed"] is True
    # the run's own seed still changes it: another head, data order and view per epoch
    assert [e["loss"] for e in metrics["history"]] != [e["loss"] for e in base["history"]]
    # reuse_views=false: the next seed draws and computes its own views
    more = thaw_train(
        args + ["hydra.sweeper.confirm.seeds=2", "hydra.sweeper.confirm.reuse_views=false"],
        tmp_path,
    )
    assert more.returncode == 0, more.stderr[-3000:]
    trainer, metrics = confirm_run(0, 44)
    assert (
        trainer["seed"] == 44 and trainer["view_seed"] is None and metrics["augment"]["seed"] == 44
    )
    assert metrics["phases"]["head"]["views_computed"] is True


@pytest.mark.slow  # default-run budget; `-m slow` runs it
def test_runs_read_the_same_from_any_directory_and_a_moved_sweep_serves_its_own_model(tmp_path):
    home = tmp_path / "home"
    make_folder(home / "photos", per_class=8)
    sw = home / "sw"
    args = [
        "--multirun",
        *FAST,
        "sweep=depth_lr",
        "data.path=photos",
        "hydra.sweep.dir=sw",  # relative paths
        "hydra.sweeper.study_name=q",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.confirm.top_k=0",
        "data.test_fraction=0.5",
        "data.val_fraction=0.4",
    ]
    res = thaw_train(args, home)
    assert res.returncode == 0, res.stderr[-3000:]
    resolved = yaml.safe_load((sw / "trial_0" / "resolved_config.yaml").read_text())
    assert resolved["data"]["path"] == str(home / "photos")
    here = thaw_cmd("thaw.commands.evaluate", [str(sw), "photos", "--out", "ev"], home)
    elsewhere_dir = tmp_path / "elsewhere"
    elsewhere_dir.mkdir()
    there = thaw_cmd(
        "thaw.commands.evaluate", [str(sw), str(home / "photos"), "--out", "ev"], elsewhere_dir
    )
    assert here.returncode == 0 and there.returncode == 0, (
        here.stderr[-2000:] + there.stderr[-2000:]
    )
    assert (
        json.loads((home / "ev" / "evaluation.json").read_text())["accuracy"]
        == json.loads((elsewhere_dir / "ev" / "evaluation.json").read_text())["accuracy"]
    )
    # export from another directory calibrates on the run's own (relative-path) data
    exp = thaw_cmd(
        "thaw.commands.export", [str(sw), "--formats", "tflite_fp32", "--out", "x"], elsewhere_dir
    )
    assert exp.returncode == 0, exp.stderr[-2000:]
    # a copied sweep dir serves its own model: the original is gone
    moved = tmp_path / "moved"
    shutil.copytree(sw, moved)
    shutil.rmtree(sw)
    best = yaml.safe_load((moved / "optimization_results.yaml").read_text())["best_trial"]
    pred = thaw_cmd("thaw.commands.predict", [str(moved), str(home / "photos")], elsewhere_dir)
    assert pred.returncode == 0, pred.stderr[-2000:]
    from thaw.model.inference import best_trial_dir

    assert best_trial_dir(moved) == moved / f"trial_{best['number']}"
    shutil.rmtree(moved / f"trial_{best['number']}")
    gone = thaw_cmd("thaw.commands.predict", [str(moved), str(home / "photos")], elsewhere_dir)
    assert (
        gone.returncode == 2
        and f"looked in {moved / ('trial_' + str(best['number']))}" in gone.stderr
    )


def thaw_cmd(module, args, cwd):
    import os
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )


def test_a_winner_that_kept_a_head_epoch_is_said_not_to_answer_for_its_depth():
    """restore_best can keep a head epoch of a fine-tuning trial: its model is the frozen base with
    a trained head, and the verdict must not credit its depth."""
    from optuna.distributions import FloatDistribution, IntDistribution

    from thaw.sweeper import confirm
    from thaw.sweeper.verdict import verdict

    study = optuna.create_study(direction="maximize")
    study.set_user_attr(confirm.BASELINE_ATTR, 0)
    space = {"unfreeze.depth": IntDistribution(0, 18), "lr.base": FloatDistribution(1e-4, 1e-2)}
    for depth, value, kept in ((0, 0.90, "head"), (8, 0.93, "head"), (3, 0.92, "finetune")):
        study.add_trial(
            optuna.trial.create_trial(
                params={"unfreeze.depth": depth, "lr.base": 1e-3},
                distributions=space,
                value=value,
                user_attrs={"kept_phase": kept, "objective_name": "val_accuracy"},
            )
        )
    said = {t.number: verdict(study, ["maximize"], t, {"best_trial": {}}) for t in study.trials}
    assert "trial 1 kept the weights of a head epoch" in said[1] and "depth 8" in said[1]
    assert "head epoch" not in said[2]  # its fine-tuning was kept
    assert "head epoch" not in said[0]  # the frozen base trains only its head
    study.add_trial(  # depth 0: its fine-tuning phase trains the head only; nothing to credit
        optuna.trial.create_trial(
            params={"unfreeze.depth": 0, "lr.base": 2e-3},
            distributions=space,
            value=0.95,
            user_attrs={"kept_phase": "head", "objective_name": "val_accuracy"},
        )
    )
    assert "head epoch" not in verdict(study, ["maximize"], study.trials[3], {"best_trial": {}})
    # before its confirmation runs (during the search, or while another worker confirms) the
    # answer says it is provisional, not that confirmation is off
    early = verdict(
        study, ["maximize"], study.trials[2], {"best_trial": {}, "confirmation_pending": 4}
    )
    assert early.startswith("so far, with 4 confirmation run(s) to go: trial 2")
    assert "top_k=0" not in early and "top_k=0" in said[2]


def test_workers_started_together_draw_apart():
    """Two workers opening one study at once hold samplers with the same seed: without DrawApart
    (installed on every sweep's sampler) they draw the same trials; with it each worker re-seeds
    when the other's trials come between its own, and a worker alone keeps its seeded draws."""
    from optuna.distributions import FloatDistribution

    from thaw.sweeper.study_setup import DrawApart

    space = {"lr.base": FloatDistribution(1e-4, 1e-2, log=True)}

    def draws(workers: int, apart: bool, rounds: int = 4) -> list[float]:
        storage = optuna.storages.InMemoryStorage()
        studies = []
        for _ in range(workers):  # each opens the study before either asks
            study = optuna.create_study(
                study_name="s",
                storage=storage,
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=7, n_startup_trials=3),
            )
            if apart:
                study.sampler.before_trial = DrawApart(study.sampler, len(study.trials))
            studies.append(study)
        out = []
        for _ in range(rounds):
            for study in studies:
                trial = study.ask(space)
                out.append(trial.params["lr.base"])
                study.tell(trial, trial.params["lr.base"])
        return out

    assert len(set(draws(2, apart=False))) < 8  # the race the helper hit: the same trials twice
    together = draws(2, apart=True)
    assert len(set(together)) == len(together) == 8
    assert draws(1, apart=True) == draws(1, apart=False)  # one worker: the seeded sequence


def test_a_key_appended_to_a_sweep_is_refused_before_it_starts(capsys):
    """A sweep's job config has lost its root's type: the schema is looked up by path."""
    from thaw.commands.train import precheck

    sweep_ = ["--multirun", "experiment=tiny", "logger=none", "sweep=depth_lr"]
    for extra, said in (
        ("+seed=3", "seed: no such setting at the top level"),
        ("+trainer.head_epoch=3", "did you mean trainer.head_epochs?"),
    ):
        with pytest.raises(SystemExit) as exit_:
            precheck([*sweep_, extra])
        assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_a_study_recorded_before_its_search_space_was_kept_still_resumes():
    from thaw.sweeper import identity

    old = {"data.path": '"/a"'}  # recorded by an earlier thaw: no search space
    new = {"data.path": '"/a"', identity.SEARCH_SPACE: "lr.base 0.0001..0.01 (log)"}
    assert identity.differences(old, new) == []
    assert identity.differences(new, {**new, identity.SEARCH_SPACE: "lr.base 0.001..0.01"})


def test_the_report_names_a_weights_file_by_its_absolute_path(tmp_path, monkeypatch):
    """The report and W&B are read from anywhere: `../shared/weights.h5` as typed says nothing
    there."""
    from thaw.commands.sweep_hooks import _weights_text

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "base.h5").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "w")
    assert _weights_text("../w/base.h5") == str(tmp_path / "w" / "base.h5")
    assert _weights_text("imagenet") == "imagenet" and _weights_text(None) == "None"
    assert _weights_text("/no/such.h5") == "/no/such.h5"  # as given: the trials say what is wrong


def test_the_baseline_takes_its_depth_range_from_its_own_backbone(tmp_path):
    """With the backbone searched, the depth range follows it; the baseline (depth 0 on the preset's
    backbone) is made with that backbone's range (it was refused as 'depth not searched')."""
    sw = tmp_path / "sw"
    args = [
        "--multirun",
        *TINY_RUN,
        "sweep=depth_lr",
        "backbone=choice(mobilenet_v2,mobilenet_v3_small)",
        "backbone.weights=null",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.confirm.top_k=0",
        "hydra.sweeper.study_name=dep",
        f"hydra.sweep.dir={sw}",
    ]
    res = thaw_train(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    base = optuna.load_study(study_name="dep", storage=f"sqlite:///{sw}/study.db").trials[0]
    assert base.user_attrs.get("baseline") is True
    assert base.params["backbone"] == "mobilenet_v2" and base.params["unfreeze.depth"] == 0
    assert base.distributions["unfreeze.depth"] == IntDistribution(0, 19)
