"""Cluster launchers for real: a local Ray head on loopback, and submitit (the SLURM launcher's
engine).

Each trial runs in a process the launcher owns (a Ray worker, a submitit job), re-attaches to its
Optuna trial through the storage and reports there; the sweeper only sees the study.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from conftest import compose_cfg, thaw_train
from optuna.trial import TrialState
from test_sweeper import TINY

# every trial pruned at its first report: proves the job reached the storage from the worker
PRUNE_ALL = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.01"]


def _sweep(sweep_dir, n_trials, *extra):
    return [
        "--multirun",
        *TINY,
        "sweep=depth_lr",
        f"hydra.sweep.dir={sweep_dir}",
        "logger=none",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.study_name=launch",
        "unfreeze.depth=range(0,4)",
        *extra,
    ]


def _trials(sweep_dir):
    return optuna.load_study(
        study_name="launch", storage=f"sqlite:///{sweep_dir}/study.db"
    ).get_trials()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A throwaway Ray head (2 CPUs) on 127.0.0.1, stopped with its process group afterwards."""
    pytest.importorskip("ray", reason="Ray not installed (pip install -e '.[ray]')")
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher not installed"
    )
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.exists():
        pytest.skip(f"ray command not found beside {sys.executable}")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="thray-", dir="/tmp")  # Ray's socket paths must stay short
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    log = open(Path(temp) / "head.out", "w")
    head = subprocess.Popen(
        [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        t0 = time.time()
        while True:
            r = subprocess.run(
                [str(ray_cli), "status", f"--address={address}"],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            if r.returncode == 0 and "CPU" in r.stdout:
                break
            if head.poll() is not None or time.time() - t0 > 90:
                pytest.skip(
                    f"Ray head did not start: {(Path(temp) / 'head.out').read_text()[-500:]}"
                )
            time.sleep(1)
        yield address
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # default-run budget; `-m slow` (and .ci/run) runs it
def test_ray_launcher_runs_trials_as_ray_tasks(tmp_path, ray_head):
    sw = tmp_path / "sw"
    res = thaw_train(
        _sweep(
            sw,
            3,
            "hydra/launcher=ray_cluster",
            "hydra.sweeper.n_jobs=2",
            f"hydra.launcher.ray.init.address={ray_head}",
            "hydra.launcher.ray.remote.num_cpus=1",
            "hydra.launcher.ray.remote.num_gpus=0",
            *PRUNE_ALL,
        ),
        cwd=tmp_path,
        timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "Connected to Ray cluster" in out
    # the trials ran inside Ray worker processes, not in the sweeping process
    ray_pids = set(re.findall(r"\(_run_job pid=(\d+)\)", out))
    assert ray_pids, out[-3000:]
    trials = _trials(sw)
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert all(t.state == TrialState.PRUNED for t in trials), [t.state for t in trials]
    assert all(list(t.intermediate_values) == [0] for t in trials)
    for t in trials:
        metrics = json.loads((sw / f"trial_{t.number}" / "metrics.json").read_text())
        assert metrics["status"] == "pruned"


@pytest.mark.slow  # shares the Ray head above; `-m slow` (and .ci/run) runs it
def test_ray_launcher_frees_a_slot_at_once(tmp_path, ray_head):
    """No batch barrier on Ray either: trial 0 returns only once 3 other trials have finished,
    which with 2 slots they can only do in the other slot while trial 0 is in flight."""
    from test_scheduling import assert_no_barrier, sweep

    sweep(
        tmp_path,
        "hydra/launcher=ray",  # Hydra's own option: the app has no thaw config (ray_cluster)
        f"hydra.launcher.ray.init.address={ray_head}",
        "++hydra.launcher.ray.init.object_store_memory=null",
        "++hydra.launcher.ray.remote.num_cpus=1",
        "++hydra.launcher.ray.remote.num_gpus=0",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=5",
        "gate=3",
        "gate_timeout=120",
    )
    assert_no_barrier(tmp_path)


def test_slurm_launcher_config_composes():
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher not installed"
    )
    cfg = compose_cfg(["hydra/launcher=slurm"], hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min) == (1, 1, 120)


@pytest.mark.slow  # ~80 s with teardown; like the Ray launcher test, run by `-m slow` (and .ci/run)
def test_submitit_launcher_runs_each_trial_as_a_job(tmp_path):
    """The SLURM launcher's engine (submitit) with its local executor: jobs are pickled, run in
    their own processes with their own logs, exactly as on SLURM nodes minus sbatch."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher not installed"
    )
    sw = tmp_path / "sw"
    res = thaw_train(
        _sweep(
            sw,
            2,
            "hydra/launcher=submitit_local",
            "hydra.sweeper.n_jobs=2",
            "hydra.launcher.timeout_min=10",
            "hydra.launcher.cpus_per_task=1",
            *PRUNE_ALL,
            "hydra.sweeper.confirm.top_k=0",
        ),  # the trials' jobs only, no confirmation runs
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    trials = _trials(sw)
    assert sorted(t.number for t in trials) == [0, 1]
    assert all(t.state == TrialState.PRUNED and list(t.intermediate_values) == [0] for t in trials)
    # submitit wrote one job folder per trial with the job's own log
    logs = list((sw / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, logs
