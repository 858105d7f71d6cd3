"""A page opened in a real headless Chromium, driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: no websocket client, no port): what the page logged as errors, and what a
script evaluated in it returns once the page has rendered."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1400,1000",
]


def need_chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    return found


def screenshot(url: str, shot, profile, size: str = "1400,1800", budget_ms: int = 8000) -> str:
    """A PNG of the page as a person sees it once its scripts had `budget_ms` of virtual time;
    returns chromium's stderr (for the assertion message when no image came)."""
    flags = [f for f in FLAGS if f not in ("--remote-debugging-pipe",) and "window-size" not in f]
    r = subprocess.run(
        [
            need_chromium(),
            *flags,
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            f"--window-size={size}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={shot}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    return r.stderr


@dataclass
class Visit:
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions
    value: object = None  # what `ready` returned once truthy (or last, on timeout)
    ready: bool = False


class _Pipe:
    def __init__(self, proc, write_fd: int, read_fd: int):
        self.proc, self.wfd, self.rfd = proc, write_fd, read_fd
        self.buf, self.next_id, self.events = b"", 0, []

    def send(self, method: str, params=None, session: str | None = None, timeout=30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply is None:
                raise TimeoutError(f"{method}: no reply from chromium")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def pump(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while (msg := self._read(deadline)) is not None:
            self.events.append(msg)

    def _read(self, deadline: float):
        while b"\0" not in self.buf:
            left = deadline - time.time()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                return None
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)


def _errors(events) -> list[str]:
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif method == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(
                f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}"
            )
    return out


def visit(url: str, ready: str, profile, timeout: float = 90.0, settle: float = 1.0) -> Visit:
    """Open `url`, wait until the JavaScript expression `ready` is truthy (polled), then a little
    more for late errors; the console's errors and `ready`'s value."""
    chromium = need_chromium()
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def fds():  # chromium reads commands on fd 3 and writes replies on fd 4
        os.dup2(to_chrome_r, 3)
        os.dup2(from_chrome_w, 4)

    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=fds,
        pass_fds=(3, 4),
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r)
    try:
        return _drive(pipe, url, ready, timeout, settle)
    finally:
        try:
            pipe.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_chrome_w)
        os.close(from_chrome_r)


def _drive(pipe: _Pipe, url: str, ready: str, timeout: float, settle: float) -> Visit:
    target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=60)["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send("Page.navigate", {"url": url}, session=session)
    out, deadline = Visit(), time.time() + timeout
    while time.time() < deadline:
        res = pipe.send(
            "Runtime.evaluate",
            {"expression": ready, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        out.value = res.get("result", {}).get("value")
        if out.value:
            out.ready = True
            break
        pipe.pump(0.5)
    pipe.pump(settle)
    out.errors = _errors(e for e in pipe.events if e.get("sessionId") in (None, session))
    return out
