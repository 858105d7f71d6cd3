import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("THAW_SHARED_DIR", REPO.parent / "shared"))
CATS_DOGS = SHARED / "data" / "cats_vs_dogs"
MNV2_035 = SHARED / "weights" / "mobilenet_v2_0.35_no_top_imagenet.h5"

# Keras writes ~/.keras/keras.json on import; keep tests out of the user's home. Each pytest
# process (xdist's workers too) removes its own homes when it exits.
_TEST_HOMES = Path(tempfile.mkdtemp(prefix="thaw-test-homes-"))
atexit.register(shutil.rmtree, _TEST_HOMES, ignore_errors=True)
(_TEST_HOMES / "keras").mkdir()
os.environ.setdefault("KERAS_HOME", str(_TEST_HOMES / "keras"))
# Child processes (xdist's workers, the thaw commands tests start) keep their temp files here too:
# one a test kills leaves TensorFlow's autograph sources behind, which its exit would have removed.
(_TEST_HOMES / "tmp").mkdir()
os.environ["TMPDIR"] = str(_TEST_HOMES / "tmp")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

# W&B is isolated whatever the caller exported (WANDB_MODE=online, a key, a `wandb login`): tests
# never send anything anywhere, never prompt, and never read or write the user's W&B settings. Tests
# that exercise W&B ask for offline mode themselves.
_WANDB_HOME = _TEST_HOMES / "wandb"
_WANDB_HOME.mkdir()
for _key in [k for k in os.environ if k.startswith("WANDB_")]:
    del os.environ[_key]
os.environ.update(
    WANDB_MODE="disabled",
    WANDB_CONFIG_DIR=str(_WANDB_HOME / "config"),
    WANDB_CACHE_DIR=str(_WANDB_HOME / "cache"),
    WANDB_DATA_DIR=str(_WANDB_HOME / "data"),
    NETRC=str(_WANDB_HOME / "netrc-absent"),
    WANDB_SILENT="true",
)


@pytest.fixture(autouse=True)
def _no_wandb_service_left_behind():
    """A test that starts W&B in this process leaves W&B's service address in os.environ
    (WANDB_SERVICE), and every later subprocess would join that service instead of starting its
    own, as a user's fresh process does (one test's runs then share run ids with another's): each
    test ends with W&B torn down and the address gone."""
    yield
    if "WANDB_SERVICE" in os.environ:
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()
        os.environ.pop("WANDB_SERVICE", None)


def need_cats_dogs():
    if not (CATS_DOGS / "train").is_dir():
        pytest.skip(f"real data absent: {CATS_DOGS} (see ../shared/data/README.md)")
    return CATS_DOGS


def need_mnv2_weights():
    if not MNV2_035.is_file():
        pytest.skip(f"real weights absent: {MNV2_035} (see ../shared/data/README.md)")
    return MNV2_035


@pytest.fixture
def cats_dogs():
    return need_cats_dogs()


@pytest.fixture
def mnv2_weights():
    return need_mnv2_weights()


# the smallest real run: random-init base, synthetic images at 32 px, no logging, nothing saved
TINY_RUN = [
    "experiment=tiny",
    "logger=none",
    "backbone.image_size=32",
    "data.num_train=64",
    "data.num_val=32",
    "data.batch_size=16",
    "trainer.save_model=false",
]


def thaw_train(args, cwd, timeout=600, env=None):
    """Run the real console entry point in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "thaw.commands.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def thaw_multirun(args, sweep_dir, cwd, timeout=600):
    """Several runs in one process (a plain Hydra multirun, one Workspace): {the job's swept
    overrides as "key=value" strings, sorted: its metrics}. Tests that compare runs pay one import
    of TensorFlow and one model build; a run in a used Workspace computes what a fresh process
    computes (tests/train/test_workspace.py)."""
    import json

    import yaml

    res = thaw_train(["--multirun", *args, f"hydra.sweep.dir={sweep_dir}"], cwd, timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    swept = {a.split("=")[0] for a in args if "," in a.split("=", 1)[-1]}
    out = {}
    for job in sorted(Path(sweep_dir).glob("*/metrics.json")):
        overrides = yaml.safe_load((job.parent / ".hydra" / "overrides.yaml").read_text())
        key = tuple(sorted(o for o in overrides if o.split("=")[0] in swept))
        out[key] = json.loads(job.read_text())
    return out


def compose_cfg(overrides=(), hydra_config=False):
    from thaw.config.schema import compose_train

    return compose_train(overrides, hydra_config)


def command(name, *args, cwd=None, timeout=300):
    """Run one of the installed console scripts (thaw-report, thaw-predict, ...) in a subprocess."""
    exe = str(Path(sys.executable).with_name(name))
    return subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def dead_and_retried(url, study_name, space=None):
    """(dead, retry): a trial whose worker stopped beating, failed by Optuna's stale-trial check
    and asked again through Optuna's retry callback, on thaw's storage with max_retry=1."""
    import time
    import warnings

    import optuna

    from thaw.sweeper.storage import make_storage

    storage = make_storage(url, heartbeat_interval=1, grace_period=1, max_retry=1)
    study = optuna.load_study(study_name=study_name, storage=storage)
    with warnings.catch_warnings():  # thaw beats outside Study.optimize on purpose
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        dead = study.ask(space)
        storage.record_heartbeat(dead._trial_id)
        time.sleep(2.2)  # past the grace period (SQLite keeps heartbeats in whole seconds)
        optuna.storages.fail_stale_trials(study)
        retry = study.ask(space)
    return dead, retry
