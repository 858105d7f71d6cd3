"""thaw-dashboard: optuna-dashboard on a sweep's study, found from its sweep dir (or a journal file
or storage URL), live while the sweep runs.

    thaw-dashboard multirun/sweeps/depth_lr-cats_vs_dogs_local-1e6b950d   # http://127.0.0.1:8080/

Bound to 127.0.0.1 unless --host says otherwise: the dashboard can edit the study (notes, trial
states), so it is not opened to the network by default. Trials carry their metrics.json and
train.log, the study its report, as artifacts (thaw.report.artifacts), refreshed every
--sync-seconds; --no-artifacts writes nothing to the study.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

import yaml

from thaw.errors import ConfigError, ThawError, first_line
from thaw.runtime.secrets import redact

log = logging.getLogger("thaw.dashboard")


def _args(argv):
    p = argparse.ArgumentParser(
        prog="thaw-dashboard", description="optuna-dashboard on a sweep's study, live."
    )
    p.add_argument(
        "target",
        help="sweep dir (optimization_results.yaml, study.db or a journal file in it), a journal "
        "file (.log/.journal/.jsonl, journal:///path) or an Optuna storage URL",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    p.add_argument(
        "--artifact-dir", default=None, help="artifact store (default: <sweep dir>/artifacts)"
    )
    p.add_argument("--no-artifacts", action="store_true", help="attach no files to the study")
    p.add_argument(
        "--sync-seconds", type=float, default=10.0, help="how often new files are attached"
    )
    return p.parse_args(argv)


def _check(args) -> None:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be 0 to 65535, got {args.port}")
    if not args.sync_seconds > 0:  # 0 would attach files in a busy loop
        raise ConfigError(f"--sync-seconds: must be > 0, got {args.sync_seconds}")


def _from_dir(path: Path) -> str:
    """The storage URL of a sweep dir (thaw.sweeper.sweep_dir), or one line saying none is there."""
    from thaw.sweeper.sweep_dir import storage_of

    url = storage_of(path, "thaw-dashboard")
    if url is None:
        raise ConfigError(
            f"{path}: no study here (no optimization_results.yaml, study.db or journal file); "
            "pass the sweep dir, a journal file or the storage URL"
        )
    return url


def locate(target: str) -> tuple[str, Path | None]:
    """(storage URL, sweep dir or None) of a sweep dir, a journal file or a storage URL."""
    from thaw.sweeper.storage import journal_path

    journal = journal_path(target)
    if journal is not None:
        if not Path(journal).is_file():
            raise ConfigError(f"{target}: no such journal file")
        return target, Path(journal).resolve().parent
    if "://" in target:
        if target.startswith("sqlite:///") and not Path(target[len("sqlite:///") :]).is_file():
            raise ConfigError(f"{redact(target)}: no such SQLite file")
        return target, None
    path = Path(target)
    if not path.exists():
        raise ConfigError(f"{target}: no such sweep directory")
    if path.is_file():
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return f"sqlite:///{path.resolve()}", path.resolve().parent
        raise ConfigError(f"{target}: not a sweep directory, SQLite file or journal file")
    url = _from_dir(path)
    return url, path.resolve()


def open_storage(url: str, target: str):
    """The storage, checked readable and holding at least one study."""
    from thaw.sweeper.storage import existing_study_db, make_storage

    existing_study_db(url, target)
    try:
        storage = make_storage(url)
        studies = storage.get_all_studies()
    except ThawError as exc:
        raise ConfigError(f"{target}: cannot open the study storage ({_detail(exc)})") from None
    except Exception as exc:  # a damaged file: SQLAlchemy's or the journal's own error
        raise ConfigError(f"{target}: cannot read the study storage ({_detail(exc)})") from None
    if not studies:
        raise ConfigError(f"{target}: the storage {redact(url)} holds no study")
    return storage, studies


def _detail(exc: BaseException) -> str:
    return redact(first_line(exc, None).split("cannot open ", 1)[-1])[:200]


def _report_study(sweep_dir: Path | None, studies) -> str | None:
    """The study whose report the sweep dir holds: its optimization_results.yaml's, or the only
    one."""
    if sweep_dir is None:
        return None
    try:
        name = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["study_name"]
    except Exception:
        name = None
    return name or (studies[0].study_name if len(studies) == 1 else None)


def _syncer(storage, store, sweep_dir: Path | None, interval: float, stop: threading.Event):
    from thaw.report import artifacts

    def loop():
        while True:
            try:
                studies = storage.get_all_studies()
                report = _report_study(sweep_dir, studies)
                for s in studies:
                    folder = sweep_dir if s.study_name == report else None
                    artifacts.sync(storage, s._study_id, store, folder)
            except Exception as exc:  # the sweep may be writing; the next round tries again
                log.warning("thaw-dashboard: artifacts not attached this round: %s", exc)
            if stop.wait(interval):
                return

    return threading.Thread(target=loop, name="thaw-artifacts", daemon=True)


def _server(storage, store, host: str, port: int):
    """optuna-dashboard's WSGI app on a threaded server (one slow request blocks no other)."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from optuna_dashboard import wsgi

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):  # no line per request
            pass

    try:
        return make_server(host, port, wsgi(storage, artifact_store=store), Server, Quiet)
    except OSError as exc:
        raise ConfigError(f"--host/--port: cannot listen on {host}:{port} ({exc})") from None


def main(argv=None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        print(
            "thaw-dashboard: error: optuna-dashboard is not installed: "
            "pip install 'thaw[dashboard]'",
            file=sys.stderr,
        )
        return 2
    made = []  # the artifact folder, where this start made it: removed if the start fails
    try:
        _check(args)
        url, sweep_dir = locate(args.target)
        storage, studies = open_storage(url, args.target)
        store = None
        if not args.no_artifacts and (args.artifact_dir or sweep_dir is not None):
            from optuna.artifacts import FileSystemArtifactStore

            folder = Path(args.artifact_dir) if args.artifact_dir else sweep_dir / "artifacts"
            made = [] if folder.exists() else [folder]
            folder.mkdir(parents=True, exist_ok=True)
            store = FileSystemArtifactStore(str(folder))
        server = _server(storage, store, args.host, args.port)
    except (ThawError, OSError) as exc:
        for folder in made:
            folder.rmdir()
        print(f"thaw-dashboard: error: {exc}", file=sys.stderr)
        return 2
    return _serve(server, storage, store, sweep_dir, url, studies, args)


def _serve(server, storage, store, sweep_dir, url, studies, args) -> int:
    stop = threading.Event()
    if store is not None:
        _syncer(storage, store, sweep_dir, args.sync_seconds, stop).start()
    host, port = server.server_address[:2]
    names = ", ".join(s.study_name for s in studies)
    print(f"thaw-dashboard: {names} ({redact(url)}) on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
