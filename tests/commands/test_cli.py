"""`thaw-train` end to end, in real subprocesses."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import thaw_train
from imagefiles import make_folder


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    res = thaw_train(["experiment=smoke", f"hydra.run.dir={out}"], cwd=out.parent)
    return res, out


def test_first_run_learns_quietly_through_both_phases(smoke_run):
    """The README's first run: offline, it shows learning, and no TensorFlow C++ start-up noise."""
    res, out = smoke_run
    assert res.returncode == 0, res.stderr[-3000:]
    assert "objective val_accuracy =" in res.stdout
    printed = res.stdout + res.stderr
    assert (
        "absl::InitializeLog" not in printed and "oneDNN" not in printed and "I0000" not in printed
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "complete"
    assert [r["phase"] for r in m["history"]] == ["head"] + ["finetune"] * 6
    assert m["val_accuracy"] >= 0.9, m["history"]  # from chance (0.5) after the head epoch
    assert m["history"][0]["val_accuracy"] <= 0.6
    assert m["objective"] == m["val_accuracy"] and m["val_loss"] > 0
    assert m["kept_phase"] == "finetune"  # the weights kept are from a fine-tuning epoch
    head, ft = m["phases"]["head"], m["phases"]["finetune"]
    # phase 2 unfreezes every block of the random-init base: far more trainable parameters than the
    # head
    assert ft["trainable_params"] > 100 * head["trainable_params"]
    assert ft["unfrozen_blocks"][0] == "stem" and ft["unfrozen_blocks"][-1] == "top"
    assert head["seconds"] > 0 and ft["seconds"] > 0
    assert m["history"][1]["lr"] == pytest.approx(m["history"][0]["lr"])  # lr.finetune_factor: 1
    assert (out / ".hydra" / "config.yaml").is_file()
    epoch_lines = re.findall(r"\[(head|finetune)\] epoch \d+/\d+ ", (out / "train.log").read_text())
    assert epoch_lines == ["head"] + ["finetune"] * 6
    # where the time went: the parts sum to the total (this process imported TensorFlow for the run)
    tb = m["time_breakdown"]
    parts = {k: v for k, v in tb.items() if k != "total"}
    assert all(v >= 0 for v in parts.values()) and abs(sum(parts.values()) - tb["total"]) < 0.01
    assert (
        tb["total"] == pytest.approx(tb["import"] + m["wall_seconds"], abs=0.05)
        and tb["import"] > 1
    )
    assert tb["trace"] > 1  # the first fine-tuning epoch traces the whole network's gradient
    assert tb["compute"] > tb["save"] > 0 and tb["data"] > 0 and tb["build"] > 0
    assert 0 < tb["checkpoint"] < tb["compute"]  # checkpoint.npz after each epoch, timed on its own


def test_tf_start_up_lines_come_back_on_request(tmp_path):
    script = (
        "from thaw.runtime.tf_startup import import_tensorflow; import_tensorflow(); "
        "print('imported')"
    )
    quiet = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    loud = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "THAW_TF_LOGS": "1"},
    )
    assert quiet.returncode == loud.returncode == 0 and "imported" in quiet.stdout
    assert "oneDNN" not in quiet.stderr and "absl" not in quiet.stderr
    if not loud.stderr.strip():
        pytest.skip("this TensorFlow build prints no start-up lines to filter")
    assert "absl::InitializeLog" in loud.stderr or "oneDNN" in loud.stderr  # TF 2.21 on x86 CPUs


def test_saved_model_reloads_without_thaw(smoke_run, tmp_path):
    res, out = smoke_run
    assert res.returncode == 0
    script = textwrap.dedent(f"""
        import sys, numpy as np, keras
        assert "thaw" not in sys.modules
        m = keras.saving.load_model({str(out / "model.keras")!r})
        x = np.random.default_rng(0).uniform(0, 255, (3, 48, 48, 3)).astype("float32")
        y = m.predict(x, verbose=0)
        assert y.shape == (3, 1), y.shape
        assert np.all(np.isfinite(y))
        assert not any(k.startswith("thaw") for k in sys.modules), "project imported"
        print("ok")
    """)
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok" in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["backbone=vgg99"], "backbone/vgg99"),
        (["lr.base=-0.1"], "lr.base"),
        (["lr.base=0"], "lr.base"),
        (["unfreeze.depth=99"], "unfreeze.depth"),
        (["data=folder", "data.path=/no/such/dir"], "data.path"),
        (["data=folder", "data.path=/etc/hostname"], "is a file"),
        (["backbone.weights=/no/such/weights.h5"], "backbone.weights"),
        (["no_such_key=1"], "no_such_key"),
        # a mistyped preset or sweep name is refused, not skipped (the run would go on without it)
        (["experiment=cats_vs_dog_local"], "Could not find 'experiment/cats_vs_dog_local'"),
        (["sweep=depth_ltr"], "Could not find 'sweep/depth_ltr'"),
        # a mistyped key names the setting meant; appending it with + is refused the same way
        (["trainer.head_epoch=3"], "trainer.head_epoch: no such setting in trainer; did you mean"),
        (["+trainer.head_epoch=3"], "did you mean trainer.head_epochs?"),
        (["hydra.sweeper.n_trials=2"], "no such setting without thaw's sweeper (a single run"),
        # typed fields: a value outside the closed set fails at composition, choices named
        (["trainer.resume=sometimes"], "expected one of [auto, never]"),
        (["augment.flip=diagonal"], "horizontal_and_vertical]"),
        # the user's own group option (--config-dir) is checked the same way
        (["--config-dir", "{user_conf}", "augment=diag"], "full_key: augment.flip"),
        (["--config-dir", "{user_conf}", "augment=bogus_key"], "full_key: augment.bogus"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, needle):
    user_conf = tmp_path / "my_conf"
    (user_conf / "augment").mkdir(parents=True)
    (user_conf / "augment" / "diag.yaml").write_text("name: diag\nflip: diagonal\n")
    (user_conf / "augment" / "bogus_key.yaml").write_text("name: b\nflip: none\nbogus: 1\n")
    args = [a.format(user_conf=user_conf) for a in args]
    out = tmp_path / "run"
    res = thaw_train([*args, f"hydra.run.dir={out}"], cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert needle in err[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert not out.exists()


def test_bad_data_folder_is_refused(tmp_path):
    make_folder(tmp_path / "imgs", classes=("only",))
    out = tmp_path / "run"
    res = thaw_train(
        [
            "experiment=tiny",
            "data=folder",
            f"data.path={tmp_path / 'imgs'}",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        timeout=60,
    )
    assert res.returncode == 2 and "only one class" in res.stderr
    assert not out.exists()


def test_imagenet_without_network_fails_fast_with_the_fix(tmp_path):
    """The weights download fails (here: through a proxy where nothing listens, so it fails with or
    without a network, and nothing is fetched) in seconds, with the override to use instead."""
    out = tmp_path / "run"
    dead_proxy = "http://127.0.0.1:9"  # the download's only way out; nothing listens there
    env = {"KERAS_HOME": str(tmp_path / "kh"), "WANDB_MODE": "", "no_proxy": "", "NO_PROXY": ""}
    env.update(
        {name: dead_proxy for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY")}
    )
    res = thaw_train(
        ["experiment=tiny", "backbone.weights=imagenet", f"hydra.run.dir={out}"],
        cwd=tmp_path,
        timeout=120,
        env=env,
    )
    assert res.returncode == 2  # W&B mode auto, no credentials: offline, yet no orphan offline run
    assert "backbone.weights=/path/to/weights.h5" in res.stderr
    assert "Connection refused" in res.stderr  # it failed at the dead proxy, network or not
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_hydra_conventions_work(tmp_path):
    r = thaw_train(["--cfg", "job", "experiment=smoke"], cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "name: smoke" in r.stdout and "backbone:" in r.stdout
    r = thaw_train(["--help"], cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and "backbone: efficientnet_b0, mobilenet_v2" in r.stdout
    r = thaw_train(["--info", "searchpath"], cwd=tmp_path, timeout=60)
    assert r.returncode == 0
