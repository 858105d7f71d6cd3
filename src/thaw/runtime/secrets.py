"""Passwords never reach a log, a result file or a tracking run: every URL's password redacted."""

from __future__ import annotations

import re
from pathlib import Path

# `scheme://user:password@host...`: the password runs to the token's LAST '@' (SQLAlchemy reads a
# password up to an '@', but a user may write '/', ':', '?', '#' or even a raw '@' in it), so a
# password is never cut short; a token with an '@' after a password-less authority loses a bit
# more than its password, never less.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):\S*@(?=[^\s@]*(?:\s|$))")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The storage URL without its password (in `user:password@` or `?password=`), for logs and
    result files. Also for any text: every URL in it loses its password."""
    text = _URL_PASSWORD.sub(r"\1:***@", str(url))
    return _QUERY_PASSWORD.sub(r"\1***", text)


def scrub(text: str, url: str) -> str:
    """`text` (a driver's error message, say) with the password of `url` nowhere in it, however
    it is spelled there (as written in the URL or percent-decoded)."""
    from urllib.parse import unquote

    text = redact(text)
    m = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:(\S*)@[^\s@]*$", str(url))
    if m and m.group(1):
        for spelling in {m.group(1), unquote(m.group(1))}:
            text = text.replace(spelling, "***")
    return text


def redact_files(folder: Path) -> None:
    """Rewrite the YAML files in `folder` (a job's `.hydra`: Hydra copies the whole command line,
    storage URL included, into hydra.yaml and overrides.yaml) with every URL's password redacted."""
    from thaw.runtime.outputs import write_text_atomic

    try:
        paths = sorted(Path(folder).glob("*.yaml"))
    except OSError:
        return
    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        clean = redact(text)
        if clean != text:
            write_text_atomic(path, clean)
