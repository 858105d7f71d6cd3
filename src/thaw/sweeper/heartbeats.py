"""The trials this process launched: heartbeats while the launcher blocks on them, and FAIL for
those it leaves unfinished (Ctrl-C), so no trial stays RUNNING for ever.

Heartbeats and fail_stale_trials are used deliberately outside Study.optimize (ask/tell across
processes).
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("thaw.sweeper")


class Heartbeats:
    """Beat for trials this process launched, while the launcher blocks on them."""

    def __init__(self, storage, interval: int | None):
        self.storage, self.interval = storage, interval
        self.ids: set = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if interval and hasattr(storage, "record_heartbeat"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.ids)
            for tid in ids:
                try:
                    self.storage.record_heartbeat(tid)
                except Exception as exc:
                    log.debug("heartbeat failed for trial id %s: %s", tid, exc)

    def add(self, trial_id):
        if self._thread is None:
            return
        with self._lock:
            self.ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def remove(self, trial_id):
        with self._lock:
            self.ids.discard(trial_id)

    def stop(self):
        self._stop.set()

    def fail_unfinished(self) -> None:
        """Trials this process asked for but did not finish (Ctrl-C) are failed, not left
        RUNNING."""
        from optuna.trial import TrialState

        for tid in list(self.ids):
            try:
                if self.storage.get_trial(tid).state == TrialState.RUNNING:
                    self.storage.set_trial_user_attr(tid, "interrupted", True)
                    self.storage.set_trial_state_values(tid, TrialState.FAIL)
            except Exception as exc:
                log.warning("could not fail interrupted trial id %s: %s", tid, exc)
