"""PostgreSQL storage for real: a throwaway server on loopback, three worker processes, one
study."""

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
from conftest import command, thaw_train
from optuna.trial import TrialState
from test_sweeper import TINY, kill_9_then_resume, output, popen


def _pg_bin(name):
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None
    )
    return found


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The server asks for a password over TCP, and the password holds every character a URL treats
# specially ('/', ':', '?', and '@' and '#' percent-encoded, as they must be in a URL): every test
# here drives the storage through such a URL, and test_storage_password_appears_nowhere looks for
# each of its pieces (they all contain PIECE) in everything the sweep printed or wrote.
PIECE = "ThawPw"
PASSWORD = f"{PIECE}a/{PIECE}b:{PIECE}c?{PIECE}d@{PIECE}e#{PIECE}f"
URL_PASSWORD = PASSWORD.replace("@", "%40").replace("#", "%23")  # how the user writes it in the URL


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[postgres]')")
    initdb, pg_ctl, createdb = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("createdb")
    if not (initdb and pg_ctl and createdb):
        pytest.skip("PostgreSQL server binaries not found (Debian package postgresql)")
    import tempfile

    # not under pytest's tmp or the test process's TMPDIR (both 0700): the server user must reach it
    root = Path(tempfile.mkdtemp(prefix="thaw-pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    prefix = []
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        prefix = [runuser, "-u", "postgres", "--"]
        for path in (root, sock, pwfile):
            shutil.chown(path, "postgres")
    port = _free_port()

    def run(cmd):
        r = subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            pytest.skip(
                f"PostgreSQL could not be started: {' '.join(cmd[:2])}: {r.stderr.strip()[:300]}"
            )

    # the Unix socket (set-up only) trusts; TCP, where thaw connects, wants the password
    run(
        [
            initdb,
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
        ]
    )
    pwfile.unlink()
    run(
        [
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
            "start",
        ]
    )
    try:
        run([createdb, "-h", str(sock), "-p", str(port), "-U", "postgres", "thaw_test"])
        yield f"postgresql://postgres:{URL_PASSWORD}@127.0.0.1:{port}/thaw_test"
    finally:
        subprocess.run(
            prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # default-run budget (the whole .ci/run reached 10 min 15 s); `-m slow` runs it
def test_three_workers_on_postgres_reach_n_trials_with_pruning(tmp_path, postgres_url):
    n_trials = 5
    args = [
        "--multirun",
        *TINY,
        "sweep=depth_lr",
        f"hydra.sweep.dir={tmp_path / 'sw'}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.study_name=pg",
        f"hydra.sweeper.storage={postgres_url}",
        "unfreeze.depth=range(0,4)",
        "logger=none",
        # the form for any pruner object: de-select the group, give the node
        "~hydra/sweeper/pruner",
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 1.01}",
    ]
    optuna.create_study(study_name="pg", storage=postgres_url, direction="maximize")
    workers = [popen(args, tmp_path, f"pg{i}") for i in range(3)]
    for w in workers:
        w.wait(timeout=600)
    for w in workers:
        assert w.returncode == 0, output(w)[-3000:]
    every = optuna.load_study(study_name="pg", storage=postgres_url).get_trials()
    # a worker that asked after another filled the last slot gives its trial back (FAIL, marked
    # surplus, never run: core._surplus); every other trial counts towards n_trials
    surplus = [t for t in every if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL and not t.intermediate_values for t in surplus)
    trials = [t for t in every if not t.user_attrs.get("surplus")]
    assert len(trials) == n_trials
    assert len({t.number for t in trials}) == n_trials
    assert all(t.state == TrialState.PRUNED for t in trials)
    assert all(list(t.intermediate_values) == [0] for t in trials)


@pytest.mark.slow  # default-run budget: SQLite runs it in the default run, the journal in -m slow
def test_postgres_sweep_survives_kill_9_and_resumes(tmp_path, postgres_url):
    kill_9_then_resume(
        tmp_path,
        [f"hydra.sweeper.storage={postgres_url}"],
        lambda: optuna.load_study(study_name="test", storage=postgres_url),
    )


@pytest.mark.slow  # needs the PostgreSQL server
def test_storage_password_appears_nowhere(tmp_path, postgres_url):
    """A real sweep on a storage URL whose password holds '/', ':', '?', '@' and '#': none of the
    password's pieces appears in its stdout, stderr, logs or any file it wrote, W&B's offline runs
    (which record the command line) and the trials' .hydra/*.yaml (Hydra's copy of the command line,
    redacted by the job) included; nor in what thaw-report and thaw-retrain print. The only place
    left holding it is the user's own command line (and shell history)."""
    sw = tmp_path / "sw"
    args = [
        "--multirun",
        *TINY,
        "sweep=depth_lr",
        f"hydra.sweep.dir={sw}",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=secret",
        f"hydra.sweeper.storage={postgres_url}",
        "unfreeze.depth=range(0,2)",
        "logger=wandb",
        "logger.mode=offline",
        "trainer.save_model=true",
        "data.num_test=16",
    ]
    res = thaw_train(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    trials = optuna.load_study(study_name="secret", storage=postgres_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # the password reached the server
    assert (
        "postgresql://postgres:***@127.0.0.1" in res.stdout + res.stderr
    )  # where the study is, redacted
    seen = {"thaw-train": res.stdout + res.stderr}
    # thaw-report reads the study from the URL; thaw-retrain echoes its command line, and a URL
    # given by mistake (a single run has no sweeper storage) is refused naming only its key
    r = command("thaw-report", postgres_url, "--study", "secret", "--out", tmp_path / "report")
    assert r.returncode == 0 and (tmp_path / "report" / "report.html").is_file(), r.stderr[-3000:]
    seen["thaw-report"] = r.stdout + r.stderr
    r = command(
        "thaw-retrain",
        sw,
        f"hydra.sweeper.storage={postgres_url}",
        f"hydra.run.dir={tmp_path / 'retrain'}",
    )
    refused = "error: hydra.sweeper.storage: no such setting without thaw's sweeper"
    assert r.returncode == 2 and refused in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("postgresql://postgres:***@127.0.0.1") == 1  # the echo, redacted
    seen["thaw-retrain"] = r.stdout + r.stderr
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file():
            seen[str(path.relative_to(tmp_path))] = path.read_bytes().decode("utf-8", "replace")
    leaks = {
        name: text[max(0, text.index(PIECE) - 120) : text.index(PIECE) + 80]
        for name, text in seen.items()
        if PIECE in text
    }
    assert leaks == {}, "\n".join(f"{name}: ...{context!r}..." for name, context in leaks.items())
    # what was read: Hydra's and thaw's records of the storage (the URL there, redacted), W&B's runs
    for name in (
        "sw/optimization_results.yaml",
        "sw/trial_0/.hydra/hydra.yaml",
        "sw/trial_1/.hydra/hydra.yaml",
    ):
        assert "postgresql://postgres:***@127.0.0.1" in seen.get(name, ""), (name, sorted(seen))
    assert len([name for name in seen if name.endswith(".wandb")]) >= 3, sorted(
        seen
    )  # 2 trials + summary
    assert len(seen) > 20
