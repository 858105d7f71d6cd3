"""Data over data.max_memory_mb streams from a decoded copy on disk and trains as it would in
memory."""

import json

import numpy as np
import pytest
from conftest import compose_cfg, thaw_train
from imagefiles import make_folder, write_image
from omegaconf import OmegaConf

from thaw import data
from thaw.config.schema import DataConfig
from thaw.data.budget import DiskLedger
from thaw.data.diskarray import DiskArray, DiskArrayWriter
from thaw.data.state import Limits
from thaw.errors import DataError
from thaw.train import feature_cache
from thaw.train.feature_cache import ActivationStore


def folder_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(DataConfig(name="folder")), kw)


def _load(c, size=32, cache_dir=None):
    return data.load(c, size, 0, cache_dir)  # a fresh DataState: decoded anew


def test_disk_array_reads_rows_like_the_array_in_memory(tmp_path):
    arr = np.random.default_rng(0).normal(size=(10, 3, 2)).astype(np.float32)
    w = DiskArrayWriter(tmp_path / "a.npy", (3, 2), np.float32)
    w.append(arr[:4])
    w.append(arr[4:])
    d = w.close()
    assert np.array_equal(np.load(tmp_path / "a.npy"), arr)  # a plain .npy file
    assert len(d) == 10 and d.nbytes == arr.nbytes and d.shape == arr.shape
    for idx in ([3, 1, 9, 1], slice(2, 7), slice(None, None, 3), [-1]):
        assert np.array_equal(d[idx], arr[idx])
    with pytest.raises(IndexError):
        d[[10]]
    assert d.fingerprint() == feature_cache.fingerprint_array(arr)
    views = d.reshape(2, 5, 3, 2)
    assert np.array_equal(views[[1]], arr.reshape(2, 5, 3, 2)[[1]])
    # an aborted writer leaves nothing; an unfinished one leaves no file at the final path
    w = DiskArrayWriter(tmp_path / "b.npy", (3,), np.uint8)
    w.append(np.zeros((2, 3), np.uint8))
    assert not (tmp_path / "b.npy").exists()
    w.abort()
    assert list(tmp_path.iterdir()) == [tmp_path / "a.npy"]


def test_streamed_splits_equal_the_in_memory_ones_and_feed_the_same_batches(tmp_path):
    root = make_folder(tmp_path / "f", per_class=10)
    kw = dict(path=str(root), test_fraction=0.5)
    mem, disk = _load(folder_cfg(**kw)), _load(folder_cfg(max_memory_mb=0, **kw))
    assert mem.streamed_from is None and isinstance(mem.train.images, np.ndarray)
    assert isinstance(disk.train.images, DiskArray) and disk.streamed_from
    for name in ("train", "val", "test"):
        a, b = getattr(mem, name), getattr(disk, name)
        assert np.array_equal(a.images, np.asarray(b.images)) and np.array_equal(a.labels, b.labels)
    for a, b in zip(
        data.train_epochs(mem.train, 4, 7, 0, 2), data.train_epochs(disk.train, 4, 7, 0, 2)
    ):
        assert np.array_equal(a[0].numpy(), b[0].numpy()) and np.array_equal(
            a[1].numpy(), b[1].numpy()
        )
    for a, b in zip(data.to_tf(mem.val, 3, False, 0), data.to_tf(disk.val, 3, False, 0)):
        assert np.array_equal(a[0].numpy(), b[0].numpy())
    both = data.with_val_in_train(disk, DiskLedger())
    assert np.array_equal(
        np.asarray(both.train.images), np.concatenate([mem.train.images, mem.val.images])
    )


def test_bad_images_are_found_while_streaming_before_training(tmp_path):
    root = make_folder(tmp_path / "f", per_class=5)
    bad = write_image(root / "dogs" / "big.jpg", (10, 20, 30), size=128)
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3])  # header intact: passes the scan, fails at decode
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="big.jpg: cannot decode"):
        _load(folder_cfg(path=str(root), val_fraction=0.5, max_memory_mb=0), cache_dir=str(cache))
    assert not list((cache / "decoded").glob("*")), "a failed stream leaves no entry behind"
    kw = dict(path=str(root), val_fraction=0.5, on_bad_image="skip")
    disk = _load(folder_cfg(max_memory_mb=0, **kw), cache_dir=str(cache))
    mem = _load(folder_cfg(**kw))
    assert disk.skipped == mem.skipped == [str(bad)]
    assert len(disk.train) + len(disk.val) == 10
    assert np.array_equal(np.asarray(disk.train.images), mem.train.images)
    assert np.array_equal(disk.train.labels, mem.train.labels)


def test_the_disk_copy_is_keyed_by_the_data_not_by_where_it_lives(tmp_path):
    root, cache = make_folder(tmp_path / "f", per_class=4), tmp_path / "cache"
    streamed = _load(folder_cfg(path=str(root), max_memory_mb=0), cache_dir=str(cache))
    entries = list((cache / "decoded").iterdir())
    assert len(entries) == 1 and streamed.streamed_from == str(entries[0])
    again = _load(folder_cfg(path=str(root)), cache_dir=str(cache))  # fits now: read into memory
    assert again.streamed_from is None and list((cache / "decoded").iterdir()) == entries
    assert np.array_equal(again.train.images, np.asarray(streamed.train.images))
    bigger = _load(
        folder_cfg(path=str(root)), size=40, cache_dir=str(cache)
    )  # another size: another entry
    assert len(list((cache / "decoded").iterdir())) == 2 and bigger.train.images.shape[1] == 40


def _train(tmp_path, name, *overrides):
    from thaw.train.recipe import train

    out = tmp_path / name
    train(compose_cfg(list(overrides)), out)
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("weights", [pytest.param("pretrained", marks=pytest.mark.slow), "random"])
@pytest.mark.parametrize("cache", [pytest.param("true", marks=pytest.mark.slow), "false"])
def test_a_streamed_run_trains_like_the_run_in_memory(tmp_path, cache, weights, caplog, request):
    # random init with BatchNorm in inference mode: also a fixed base, and runs without ../shared
    base = (
        [f"backbone.weights={request.getfixturevalue('mnv2_weights')}"]
        if weights == "pretrained"
        else ["backbone.batchnorm=inference"]
    )
    root = make_folder(tmp_path / "f", per_class=16)
    common = [
        "experiment=tiny",
        "data=folder",
        f"data.path={root}",
        *base,
        "backbone.image_size=48",
        "head.dropout=0",
        "trainer.head_epochs=2",
        "trainer.finetune_epochs=2",
        "unfreeze.depth=2",
        "data.batch_size=8",
        f"trainer.cache_features={cache}",
        "trainer.deterministic=true",
    ]
    mem = _train(tmp_path, "mem", *common)
    with caplog.at_level("INFO"):
        disk = _train(tmp_path, "disk", *common, "data.max_memory_mb=0")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "streamed from disk" in said and ("go to disk" in said) == (cache == "true")
    assert len(mem["history"]) == len(disk["history"]) == 4
    for a, b in zip(mem["history"], disk["history"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (key, a, b)
    # the loss moves (the head learns even on a random base), so equal curves mean something
    assert mem["history"][-1]["loss"] < mem["history"][0]["loss"]


def test_no_room_on_disk_for_the_stream_is_one_line_exit_2(tmp_path):
    root, out, cache = (
        make_folder(tmp_path / "f", per_class=4),
        tmp_path / "run",
        tmp_path / "cache",
    )
    res = thaw_train(
        [
            "experiment=tiny",
            "data=folder",
            f"data.path={root}",
            "data.max_memory_mb=0",
            "data.max_disk_mb=0",
            f"trainer.cache_dir={cache}",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert (
        len(err) == 1 and "data.max_disk_mb" in err[0] and "streaming the decoded images" in err[0]
    ), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not out.exists() and not (cache / "decoded").exists()


def test_decoded_images_that_cannot_be_allocated_fail_in_one_line_naming_the_memory_key():
    """Forced into memory (a large data.max_memory_mb) under `ulimit -d`, the decode array is
    allocated before any image is decoded: a DataError naming the key, not NumPy's MemoryError."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # NumPy's thread stacks stay under the limit

    def under_1_gib(code: str) -> subprocess.CompletedProcess:
        limit = "import resource; resource.setrlimit(resource.RLIMIT_DATA, (2**30, 2**30))\n"
        cmd = [sys.executable, "-c", limit + code]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    enforced = under_1_gib(
        "import numpy as np\ntry:\n    np.empty(2**31, np.uint8)\n"
        "except MemoryError:\n    print('enforced')"
    )
    if enforced.stdout.strip() != "enforced":
        pytest.skip("this kernel does not count anonymous mappings against RLIMIT_DATA")
    out = under_1_gib(
        "from thaw.data.decode import _allocate; from thaw.errors import DataError\n"
        "try:\n    _allocate(4000, 512)\nexcept DataError as e:\n    print('DataError:', e)"
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    line = out.stdout.strip()
    assert line.startswith("DataError: data: 4000 decoded images") and "\n" not in line, line
    assert "data.max_memory_mb" in line and "GB" in line


def test_the_default_memory_budget_follows_ulimit_d():
    import subprocess
    import sys

    script = (
        "import resource; resource.setrlimit(resource.RLIMIT_DATA, (3 * 2**30, 3 * 2**30)); "
        "from omegaconf import OmegaConf; from thaw.data import budget; "
        "from thaw.data.state import Limits; lim = Limits(); "
        "print(lim.available_memory(), "
        "budget.memory_budget(OmegaConf.create({'max_memory_mb': None}), lim), "
        "budget.memory_budget(OmegaConf.create({'max_memory_mb': 100}), lim))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    avail, default, fixed = map(int, out.stdout.split())
    assert 0 < avail <= 3 * 2**30 and default == avail // 2 and fixed == 100 * 2**20


def test_spilled_activations_are_keyed_on_disk_read_back_and_bounded(tmp_path):
    cache_dir, arr = tmp_path / "cache", np.arange(4 * 10 * 3, dtype=np.float32).reshape(4, 10, 3)
    data_cfg = OmegaConf.create({"max_disk_mb": None})

    def compute(sink):  # as predict_views writes: rows of (view, image) in order, in batches
        for chunk in np.array_split(arr.reshape(40, 3), 3):
            sink.append(chunk)
        return sink.close()

    cache = feature_cache.FeatureCache(
        1000, str(cache_dir), ActivationStore(), Limits(), spill_bytes=100, data_cfg=data_cfg
    )
    got = cache.get_or_compute("views-key", compute, shape=(4, 10, 3), lead=2)
    assert (
        isinstance(got, DiskArray)
        and got.shape == (4, 10, 3)
        and np.array_equal(np.asarray(got), arr)
    )
    assert (cache_dir / "views-key.npy").is_file() and cache.spilled == ["views-key"]
    small = cache.get_or_compute("small", lambda sink: compute_small(sink), shape=(2, 3))
    assert isinstance(small, np.ndarray) and np.array_equal(np.load(cache_dir / "small.npy"), small)
    # another process (an empty store) reads the spilled entry back from cache_dir, as a DiskArray
    later = feature_cache.FeatureCache(
        1000, str(cache_dir), ActivationStore(), Limits(), spill_bytes=100, data_cfg=data_cfg
    )
    again = later.get_or_compute(
        "views-key", lambda sink: pytest.fail("recomputed"), shape=(4, 10, 3), lead=2
    )
    assert isinstance(again, DiskArray) and again.shape == (4, 10, 3) and later.hits == 1
    kept = later.get_or_compute("small", lambda sink: pytest.fail("recomputed"), shape=(2, 3))
    assert isinstance(kept, np.ndarray) and later.hits == 2  # small enough: read into memory
    # the disk bound: no room, one DataError naming the key, the claim given back
    tight = feature_cache.FeatureCache(
        1000,
        str(tmp_path / "other"),
        ActivationStore(),
        Limits(),
        spill_bytes=100,
        data_cfg=OmegaConf.create({"max_disk_mb": 0}),
    )
    with pytest.raises(DataError, match="data.max_disk_mb"):
        tight.sink("big", (4, 10, 3), lead=2)
    assert tight.limits.disk.written == 0


def compute_small(sink):
    sink.append(np.ones((2, 3), np.float32))
    return sink.close()
