"""PostgreSQL storage for real: a throwaway server on loopback, three worker processes, one study."""

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from test_sweeper import TINY, kill_9_then_resume, output, popen


def _pg_bin(name):
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[postgres]')")
    initdb, pg_ctl, createdb = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("createdb")
    if not (initdb and pg_ctl and createdb):
        pytest.skip("PostgreSQL server binaries not found (Debian package postgresql)")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="thaw-pg-"))  # not under pytest's 0700 tmp: the server user must reach it
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    prefix = []
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        prefix = [runuser, "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()

    def run(cmd):
        r = subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            pytest.skip(f"PostgreSQL could not be started: {' '.join(cmd[:2])}: {r.stderr.strip()[:300]}")

    run([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"])
    run([pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
         f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"])
    try:
        run([createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "thaw_test"])
        yield f"postgresql://postgres@127.0.0.1:{port}/thaw_test"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # default-run budget (the whole .ci/run reached 10 min 15 s); `-m slow` runs it
def test_three_workers_on_postgres_reach_n_trials_with_pruning(tmp_path, postgres_url):
    n_trials = 5
    args = ["--multirun", *TINY, "sweep=depth_lr", f"hydra.sweep.dir={tmp_path / 'sw'}",
            f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.study_name=pg", f"hydra.sweeper.storage={postgres_url}",
            "unfreeze.depth=range(0,4)", "logger=none",
            "~hydra/sweeper/pruner",  # the form for any pruner object: de-select the group, give the node
            "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 1.01}"]
    optuna.create_study(study_name="pg", storage=postgres_url, direction="maximize")
    workers = [popen(args, tmp_path, f"pg{i}") for i in range(3)]
    for w in workers:
        w.wait(timeout=600)
    for w in workers:
        assert w.returncode == 0, output(w)[-3000:]
    trials = optuna.load_study(study_name="pg", storage=postgres_url).get_trials()
    assert len(trials) == n_trials
    assert len({t.number for t in trials}) == n_trials
    assert all(t.state == TrialState.PRUNED for t in trials)
    assert all(list(t.intermediate_values) == [0] for t in trials)


@pytest.mark.slow  # default-run budget: SQLite and journal run this in the default run
def test_postgres_sweep_survives_kill_9_and_resumes(tmp_path, postgres_url):
    kill_9_then_resume(tmp_path, [f"hydra.sweeper.storage={postgres_url}"],
                       lambda: optuna.load_study(study_name="test", storage=postgres_url))
