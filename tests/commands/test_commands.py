"""After a sweep: thaw-predict, thaw-evaluate, thaw-export and thaw-retrain, as real subprocesses on
a real trained model (synthetic shapes here; the shared photos in test_commands_real.py)."""

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import command, thaw_train

from thaw.model.inference import RESOLVED_CONFIG


def write_shapes(root: Path, per_class=12, size=64, seed=7):
    """Synthetic shapes (the smoke data's generator) as PNG files in class folders, plus bad
    files."""
    from PIL import Image

    from thaw.data.sources import draw_shape

    rng = np.random.default_rng(seed)
    for label, name in enumerate(("circle", "square")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(draw_shape(rng, label, size)).save(root / name / f"{name}_{i}.png")
    (root / "circle" / "notes.jpg").write_text("not an image")
    (root / "square" / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    run = tmp / "run"
    res = thaw_train(
        ["experiment=tiny", "trainer.save_model=true", "logger=none", f"hydra.run.dir={run}"],
        cwd=tmp,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return run, write_shapes(tmp / "photos")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A model that learned its task (the tiny one does not: its outputs barely move, so any export
    agrees with it): experiment=smoke at 40 px, ~40 s; measured 0.98 validation accuracy."""
    tmp = tmp_path_factory.mktemp("learned")
    run = tmp / "run"
    res = thaw_train(
        [
            "experiment=smoke",
            "backbone.image_size=40",
            "trainer.deterministic=true",
            "logger=none",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["val_accuracy"] >= 0.8, [
        r["val_accuracy"] for r in m["history"]
    ]  # it learned: not chance (0.5)
    return run


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_writes_one_row_per_file_and_reports_bad_ones(trained, tmp_path):
    run, photos = trained
    res = command("thaw-predict", run, photos)
    assert res.returncode == 0, res.stderr
    rows = _csv(res.stdout)
    assert len(rows) == 26 and list(rows[0])[:4] == [
        "path",
        "predicted",
        "prob_circle",
        "prob_square",
    ]
    bad = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(bad) == {"notes.jpg", "empty.png"} and "empty file" in bad["empty.png"]
    good = [r for r in rows if not r["error"]]
    for r in good:
        p = np.array([float(r["prob_circle"]), float(r["prob_square"])])
        assert abs(p.sum() - 1) < 1e-5 and r["predicted"] == ("circle", "square")[int(p.argmax())]
    # the same probabilities as the Keras model itself on the same decoded files
    import keras

    from thaw.model.inference import as_probabilities, decode_images

    model = keras.saving.load_model(run / "model.keras", compile=False)
    files = [r["path"] for r in good]
    images, ok, _ = decode_images(files, 64)
    expect = as_probabilities(model.predict(images.astype("float32"), verbose=0))
    got = np.array([[float(r["prob_circle"]), float(r["prob_square"])] for r in good])
    np.testing.assert_allclose(got, expect, atol=1e-5)
    # --out writes the same CSV; single files work; a sweep dir means its best trial
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump({"best_trial": {"number": 3, "run_dir": str(run)}})
    )
    out = tmp_path / "pred.csv"
    res = command("thaw-predict", sweep, files[0], "--out", out)
    assert res.returncode == 0 and res.stdout == "" and _csv(out.read_text())[0]["path"] == files[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{tmp}/nope", "{photos}"], "no such file or directory"),
        (["{tmp}", "{photos}"], "{tmp}: not a thaw run dir, sweep dir or model.keras"),
        # outputs/NAME/ holds dated run dirs: the newest is named
        (["{run.parent}", "{photos}"], "it holds 1 run or sweep dir(s), the newest {run}"),
        (["{run}", "{tmp}/missing.jpg"], "missing.jpg: no such file"),
        (["{run}/metrics.json", "{photos}"], "not a .keras model file"),
        (["{run}", "{photos}", "--batch-size", "0"], "--batch-size: must be >= 1"),
    ],
)
def test_predict_bad_input_is_one_line_exit_2(trained, tmp_path, args, needle):
    run, photos = trained
    names = {"tmp": tmp_path, "run": run, "photos": photos}
    res = command("thaw-predict", *[a.format(**names) for a in args])
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert needle.format(**names) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_evaluate_folder_writes_json_and_an_escaped_html_page(trained, tmp_path):
    run, photos = trained

    odd = photos.parent / "odd"
    for name in ("circle", "square"):
        (odd / name).mkdir(parents=True)
        for f in sorted((photos / name).glob(f"{name}_*.png"))[:4]:
            (odd / name / f.name).write_bytes(f.read_bytes())
    (odd / "square" / "<img src=x onerror=alert(1)>.png").write_bytes(
        b""
    )  # listed under bad files, escaped
    res = command("thaw-evaluate", run, odd, "--out", tmp_path / "ev")
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    cm = np.array(r["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == r["num_images"] == 8
    assert r["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert r["per_class"]["square"]["support"] == 4 and len(
        r["misclassified"]
    ) == cm.sum() - np.trace(cm)
    assert [Path(f).name for f in r["bad_files"]] == ["<img src=x onerror=alert(1)>.png"]
    for name, c in r["per_class"].items():
        i = r["classes"].index(name)
        if cm[:, i].sum():
            assert c["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())
    page = (tmp_path / "ev" / "evaluation.html").read_text()
    assert "<img src=x onerror" not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert page.count("data:image/jpeg;base64,") == len(r["misclassified"])
    assert f"accuracy {r['accuracy']:.4f} on 8 images" in res.stdout
    # a class the model does not know: one line, exit 2, nothing written
    (odd / "triangle").mkdir()
    (odd / "triangle" / "t.png").write_bytes((photos / "circle" / "circle_0.png").read_bytes())
    res = command("thaw-evaluate", run, odd, "--out", tmp_path / "ev2")
    assert res.returncode == 2 and "triangle" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "ev2").exists()
    # nothing decodable: one line, exit 2
    empty = tmp_path / "undecodable" / "circle"
    empty.mkdir(parents=True)
    (empty / "a.png").write_bytes(b"")
    res = command("thaw-evaluate", run, empty.parent, "--out", tmp_path / "ev3")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_evaluate_says_when_the_images_are_not_new(tmp_path):
    """Images the run trained on, or validated on (they chose its epoch, or a sweep's winner), are
    named, counted and warned about, also when copied elsewhere; new images are not."""
    data = tmp_path / "data"
    write_shapes(data / "train", per_class=16, seed=1)
    write_shapes(data / "validation", per_class=6, seed=2)
    run = tmp_path / "run"
    res = thaw_train(
        [
            "experiment=tiny",
            "data=folder",
            f"data.path={data}",
            "data.on_bad_image=skip",
            "trainer.save_model=true",
            "logger=none",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    mixed = tmp_path / "mixed"
    fresh = write_shapes(tmp_path / "fresh", per_class=2, seed=3)
    for name in ("circle", "square"):  # per class: 3 validation, 2 + 2 training, 2 new images
        (mixed / name).mkdir(parents=True)
        for f in sorted((data / "validation" / name).glob(f"{name}_*.png"))[:3]:
            (mixed / name / f"val_{f.name}").write_bytes(f.read_bytes())
        for f in sorted((data / "train" / name).glob(f"{name}_*.png"))[:2]:
            (mixed / name / f"train_{f.name}").symlink_to(f)
            (mixed / name / f"copy_{f.name}").write_bytes(f.read_bytes())
        for f in sorted((fresh / name).glob(f"{name}_*.png")):
            (mixed / name / f"new_{f.name}").write_bytes(f.read_bytes())
    res = command("thaw-evaluate", run, mixed, "--out", tmp_path / "ev")
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert r["num_images"] == 18 and r["seen_by_run"] == {"train": 8, "validation": 6}
    warning = [line for line in res.stderr.splitlines() if "thaw-evaluate: warning" in line]
    assert len(warning) == 1, res.stderr
    assert "of these 18 images, 8 were trained on and 6 are validation images" in warning[0]
    # the honest figure on the 4 images the run never read, beside the optimistic one
    wrong_new = sum(Path(m["path"]).name.startswith("new_") for m in r["misclassified"])
    assert r["accuracy_on_new"] == {"accuracy": 1 - wrong_new / 4, "num_images": 4}
    assert (
        f"on the other 4 (images the run never read), the accuracy is {1 - wrong_new / 4:.4f}"
        in warning[0]
    )
    assert "Not new images" in (tmp_path / "ev" / "evaluation.html").read_text()
    res = command("thaw-evaluate", run, fresh, "--out", tmp_path / "ev_fresh")
    r = json.loads((tmp_path / "ev_fresh" / "evaluation.json").read_text())
    assert res.returncode == 0 and r["seen_by_run"] == {"train": 0, "validation": 0}
    assert r["accuracy_on_new"] == {"accuracy": r["accuracy"], "num_images": 4}  # all new
    assert "warning" not in res.stderr
    assert "Not new images" not in (tmp_path / "ev_fresh" / "evaluation.html").read_text()


def test_export_calibrates_and_checks_on_a_folder_given_with_data(trained, tmp_path):
    run, photos = trained  # 24 images and 2 bad files: only those it uses are decoded
    res = command(
        "thaw-export",
        run,
        "--out",
        tmp_path / "ex",
        "--formats",
        "tflite_fp32,tflite_int8",
        "--data",
        photos,
        "--calibration-images",
        4,
        "--check-images",
        10,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "ex" / "export.json").read_text())
    assert r["checked_on"] == {"images": 10, "source": str(photos)}
    assert r["calibration_images"] == 4 and set(r["exports"]) == {"tflite_fp32", "tflite_int8"}
    assert "checked on only 10 image(s)" in res.stderr  # too few to say much: said
    assert "--calibration-images: ignored" not in res.stderr
    # only int8 is calibrated: a count given without it changes nothing, and is said to
    res = command(
        "thaw-export",
        run,
        "--out",
        tmp_path / "fp32",
        "--formats",
        "tflite_fp32",
        "--data",
        photos,
        "--calibration-images",
        4,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--calibration-images: ignored, only tflite_int8 is calibrated" in res.stderr
    r = json.loads((tmp_path / "fp32" / "export.json").read_text())
    assert r["calibration_images"] == 0 and set(r["exports"]) == {"tflite_fp32"}


def test_an_export_that_fails_midway_leaves_the_last_export_whole(trained, tmp_path, monkeypatch):
    """Outputs are made beside the old ones and moved in at the end: a re-export cut short (here
    after its SavedModel and first TFLite file) changes none of the last export's files."""
    from thaw.commands import export

    run, photos = trained
    out = tmp_path / "ex"
    args = (str(run), str(out), ["saved_model", "tflite_fp32"], str(photos), 4, 4)
    first = export.export(*args)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert all(Path(e["path"]).parent == out for e in first["exports"].values())

    def cut_short(path, images):
        raise KeyboardInterrupt  # as a kill would, after the conversion wrote its file

    monkeypatch.setattr(export, "run_tflite", cut_short)
    with pytest.raises(KeyboardInterrupt):
        export.export(*args)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # same files, same bytes; no scratch folder left
    monkeypatch.undo()
    again = export.export(*args)  # a whole re-export replaces them
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json",
        "model_fp32.tflite",
        "saved_model",
    ]
    assert json.loads((out / "export.json").read_text()) == again


def test_predictions_come_a_chunk_at_a_time_with_progress(trained, capsys):
    """Any folder fits in memory: files are decoded and predicted a chunk at a time, with the same
    answers as all at once, and a progress line per chunk."""
    from thaw.model.inference import list_images, load_trained, probabilities_in_chunks

    run, photos = trained
    model = load_trained(str(run))
    files = list_images([str(photos)])
    whole = probabilities_in_chunks(model, files, 64, "whole")
    assert "whole:" not in capsys.readouterr().err  # one chunk: nothing to report
    good, probs, problems = probabilities_in_chunks(model, files, 64, "chunked", chunk=5)
    progress = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("chunked:")
    ]
    assert len(progress) == -(-len(files) // 5) and progress[-1].startswith(
        f"chunked: {len(files)}/{len(files)} images"
    )
    assert good == whole[0] and problems == whole[2] and len(problems) == 2
    np.testing.assert_allclose(probs, whole[1], atol=1e-6)


def test_export_data_decodes_only_the_images_it_draws(trained, monkeypatch):
    from thaw.commands import export
    from thaw.model.inference import load_trained

    run, photos = trained  # 24 images and 2 bad files
    decoded = []

    def counting(files, size):
        decoded.append(len(files))
        return real(files, size)

    real = export.decode_images
    monkeypatch.setattr(export, "decode_images", counting)
    rep, check, source = export.sample_images(load_trained(str(run)), str(photos), 4, 6)
    assert decoded == [4 + 6 + 1 + 8] and source == str(photos)  # of 26 files
    assert len(rep) == 4 and len(check) == 6
    rep, check, _ = export.sample_images(load_trained(str(run)), str(photos), 12, 2)
    assert len(rep) == 12 and len(check) == 2  # few checks do not shrink the calibration


@pytest.mark.parametrize(
    "prog, out, needle",
    [
        ("thaw-predict", "{tmp}/a_dir", "is a directory; give a file name"),
        ("thaw-predict", "{tmp}/new/", "is a directory; give a file name"),
        ("thaw-evaluate", "{tmp}/a_file", "is a file, not a directory"),
        ("thaw-export", "{tmp}/a_file/sub", "is a file, not a directory"),
        ("thaw-report", "{tmp}/a_file", "is a file, not a directory"),
    ],
)
def test_an_out_path_in_the_way_is_refused_before_any_work(trained, tmp_path, prog, out, needle):
    run, photos = trained
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    target = {"thaw-report": [tmp_path / "nope"], "thaw-export": [run]}.get(prog, [run, photos])
    res = command(prog, *target, "--out", out.format(tmp=tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "a_file").read_text() == "keep me" and not (tmp_path / "new").exists()


def test_predict_names_an_empty_folder_and_refuses_when_nothing_reads(trained, tmp_path):
    run, photos = trained
    (tmp_path / "empty").mkdir()
    res = command("thaw-predict", run, tmp_path / "empty", photos / "circle" / "circle_0.png")
    assert res.returncode == 0 and f"thaw-predict: warning: {tmp_path / 'empty'}" in res.stderr
    assert len(list(csv.DictReader(io.StringIO(res.stdout)))) == 1
    bad = [photos / "circle" / "notes.jpg", photos / "square" / "empty.png"]
    res = command("thaw-predict", run, *bad)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "none of the 2 file(s) could be read as an image" in res.stderr and not res.stdout
    # a model.keras copied away from its run has no class names: said, not silently class_0
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.keras").write_bytes((run / "model.keras").read_bytes())
    res = command("thaw-predict", tmp_path / "bare" / "model.keras", photos / "circle")
    assert res.returncode == 0 and "prob_class_0" in res.stdout
    assert "thaw-predict: warning: no metrics.json beside" in res.stderr


def test_export_files_agree_with_keras(learned, tmp_path):
    """On a model that learned (0.98 validation accuracy): its 128 validation images are half
    circles, half squares, so agreeing with Keras means following its two answers, not one constant
    output."""
    run = learned
    res = command(
        "thaw-export",
        run,
        "--out",
        tmp_path / "ex",
        "--check-images",
        128,
        "--calibration-images",
        64,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "ex" / "export.json").read_text())
    e = r["exports"]
    assert set(e) == {"saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8"}
    assert r["checked_on"]["images"] == 128 and r["calibration_images"] == 64
    for fmt in ("saved_model", "tflite_fp32"):
        assert e[fmt]["top1_agreement"] == 1.0 and e[fmt]["max_abs_prob_diff"] < 1e-4, (fmt, e[fmt])
    assert (
        e["tflite_fp16"]["top1_agreement"] >= 0.99 and e["tflite_fp16"]["max_abs_prob_diff"] < 0.05
    ), e["tflite_fp16"]
    # post-training int8, calibrated on 64 training images: measured 0.992 agreement, max |dp| 0.09
    assert (
        e["tflite_int8"]["top1_agreement"] >= 0.95 and e["tflite_int8"]["max_abs_prob_diff"] < 0.3
    ), e["tflite_int8"]
    assert (
        e["tflite_int8"]["bytes"] < 0.5 * e["tflite_fp32"]["bytes"]
    )  # int8: a quarter, plus overhead
    assert e["tflite_fp16"]["bytes"] < 0.7 * e["tflite_fp32"]["bytes"]
    for info in e.values():
        assert Path(info["path"]).exists() and info["bytes"] > 10_000
    res = command("thaw-export", run, "--formats", "tflite_fp32,onnx", "--out", tmp_path / "bad")
    assert (
        res.returncode == 2
        and "--formats: unknown onnx" in res.stderr
        and not (tmp_path / "bad").exists()
    )


def test_retrain_reruns_the_exact_config_with_overrides(trained, tmp_path):
    run, _ = trained
    res = command(
        "thaw-retrain",
        run,
        "trainer.finetune_epochs=2",
        "--train-on-val",
        f"hydra.run.dir={tmp_path / 'again'}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # the configs as they ran (resolved): Hydra's own copy keeps interpolations the original
    # composed (backbone.num_blocks reads the registry) and the retrain starts from their values
    old = yaml.safe_load((run / RESOLVED_CONFIG).read_text())
    new = yaml.safe_load((tmp_path / "again" / RESOLVED_CONFIG).read_text())
    assert new["trainer"].pop("finetune_epochs") == 2 and old["trainer"].pop("finetune_epochs") == 1
    assert new["data"].pop("train_on_val") is True and old["data"].pop("train_on_val") is False
    assert (
        new["trainer"].pop("restore_best") is False and old["trainer"].pop("restore_best") is True
    )
    assert new == old  # everything else exactly as the original run
    m_old = json.loads((run / "metrics.json").read_text())
    m = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert m["num_train"] == m_old["num_train"] + m_old["num_val"] and len(m["history"]) == 3
    assert (tmp_path / "again" / "model.keras").is_file()
    # a typo'd key fails at composition: one line, exit 2
    res = command(
        "thaw-retrain",
        run,
        "trainer.finetune_epoch=2",
        f"hydra.run.dir={tmp_path / 'typo'}",
        cwd=tmp_path,
    )
    # (the retrain echoes the command it hands over, so the key alone is no evidence)
    errors = [line for line in res.stderr.splitlines() if ": error: " in line]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "trainer.finetune_epoch: no such setting in trainer; did you mean" in errors[0]
    assert not (tmp_path / "typo").exists()
    # a config group cannot be swapped under the winner's keys (it would be silently undone)
    res = command(
        "thaw-retrain", run, "data=folder", f"hydra.run.dir={tmp_path / 'grp'}", cwd=tmp_path
    )
    assert res.returncode == 2 and "data=folder" in res.stderr and not (tmp_path / "grp").exists()


def test_a_sweep_whose_best_trial_has_no_model_is_named_as_a_sweep(tmp_path):
    from thaw.errors import ConfigError
    from thaw.model.inference import find_run

    (tmp_path / "trial_3").mkdir()
    (tmp_path / "optimization_results.yaml").write_text(
        yaml.safe_dump({"best_trial": {"number": 3, "run_dir": "trial_3"}})
    )
    with pytest.raises(ConfigError, match="trial_3: the sweep's best trial has no model.keras"):
        find_run(str(tmp_path))


@pytest.mark.parametrize(
    "status, save_model, why",
    [
        ("pruned", True, "the trial was pruned: pruned trials keep no model"),
        ("complete", False, "made with trainer.save_model=false"),
        ("complete", True, "deleted or moved since, or removed by the sweep"),
    ],
)
def test_a_run_without_a_model_says_why(tmp_path, status, save_model, why):
    from thaw.errors import ConfigError
    from thaw.model.inference import find_run

    run = tmp_path / "trial_3"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": status}))
    (run / RESOLVED_CONFIG).write_text(yaml.safe_dump({"trainer": {"save_model": save_model}}))
    with pytest.raises(ConfigError, match=f"no model.keras \\(.*{re.escape(why)}.*thaw-retrain"):
        find_run(str(run))
