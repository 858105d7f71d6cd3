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
import tempfile
from contextlib import contextmanager

NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} [\d:. ]+\d+ \S+\.cc:\d+\]"
                   r"|To enable the following instructions:|INFO: Created TensorFlow Lite XNNPACK delegate"
                   r"|fully_quantize: \d+, inference_type: |W\d{4} [\d:. ]+\d+ \S+\.cc:\d+\] Ignored )")


@contextmanager
def native_stderr_filtered():
    """Capture what native code writes to file descriptor 2; write back all but the known noise."""
    if os.environ.get("THAW_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [ln for ln in captured.read().decode(errors="replace").splitlines()
                    if ln.strip() and not NOISE.match(ln)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def import_tensorflow():
    """The tensorflow module, imported quietly the first time."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        import tensorflow

        return tensorflow
    with native_stderr_filtered():
        import tensorflow
    return tensorflow
