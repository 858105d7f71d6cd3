"""Import TensorFlow without its C++ start-up noise.

TensorFlow 2.21 writes `WARNING: All log messages before absl::InitializeLog() ...` and `I0000 ...
oneDNN custom operations are on ...` (twice) straight to file descriptor 2 while it loads, before
TF_CPP_MIN_LOG_LEVEL is consulted: a newcomer's first run looks broken. thaw imports TensorFlow
once per process through `import_tensorflow()`, with stderr captured; known start-up lines are
dropped and anything else (a real warning or error) is written back. `THAW_TF_LOGS=1` keeps it all.
TensorFlow Lite's converter and interpreter (thaw-export) are wrapped the same way.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} [\d:. ]+\d+ \S+\.cc:\d+\]"
    r"|To enable the following instructions:|INFO: Created TensorFlow Lite XNNPACK delegate"
    r"|fully_quantize: \d+, inference_type: |W\d{4} [\d:. ]+\d+ \S+\.cc:\d+\] Ignored )"
)


def _forward(read_fd: int, out_fd: int) -> None:
    """Copy lines from the pipe to the real stderr as they come, dropping the known noise."""
    with os.fdopen(read_fd, "rb", closefd=True) as pipe:
        for raw in pipe:
            line = raw.decode(errors="replace")
            if line.strip() and not NOISE.match(line):
                os.write(out_fd, raw)


@contextmanager
def native_stderr_filtered():
    """Route what native code writes to file descriptor 2 through a filter, line by line as it comes
    (a fatal message just before an abort still gets out); known noise is dropped."""
    if os.environ.get("THAW_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    reader = threading.Thread(target=_forward, args=(read_fd, saved), daemon=True)
    reader.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(timeout=5)
        os.close(saved)


def import_tensorflow():
    """The tensorflow module, imported quietly the first time."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        import tensorflow

        return tensorflow
    with native_stderr_filtered():
        import tensorflow
    return tensorflow
