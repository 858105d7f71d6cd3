"""Ctrl-C / SIGTERM without corrupting anything: the first signal asks training to stop at the next
batch boundary (an exception raised asynchronously inside TensorFlow can surface as a SystemError);
a second signal aborts at once."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("thaw")

REQUESTED = threading.Event()


def _handler(signum, frame):
    if REQUESTED.is_set():
        raise KeyboardInterrupt(f"signal {signum} (second)")
    REQUESTED.set()
    log.warning("signal %d: stopping after the current batch (send it again to abort now)", signum)


def install() -> None:
    try:
        signal.signal(signal.SIGINT, _handler)
        signal.signal(signal.SIGTERM, _handler)
    except ValueError:  # not the main thread
        pass


def check() -> None:
    """Raise KeyboardInterrupt at a safe point if a stop was requested."""
    if REQUESTED.is_set():
        raise KeyboardInterrupt("interrupted (SIGINT/SIGTERM)")
