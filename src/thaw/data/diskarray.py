"""Arrays on disk, read a batch of rows at a time: data and activations larger than memory.

A `DiskArray` is a plain .npy file (np.load opens it) read with one pread per row. It is not
memory-mapped: pages of a mapping that training touches count in the process's resident memory
until it ends, so a mapped 5 GB array would still cost 5 GB of RSS. Reads go through the page cache,
which the kernel gives back under pressure. `DiskArrayWriter` writes rows as they are computed (a
decode chunk, a batch of activations) and renames the file into place when complete.
"""

from __future__ import annotations

import ast
import hashlib
import math
import os
import struct
import threading
from pathlib import Path

import numpy as np

HEADER_BYTES = 128  # fixed, so the row count can be written when the last row is known


def npy_header(shape: tuple[int, ...], dtype) -> bytes:
    """A version 1.0 .npy header padded to HEADER_BYTES (a multiple of 64, as the format asks)."""
    # numpy's own layout, repr()s and all
    text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (  # noqa: UP031
        np.lib.format.dtype_to_descr(np.dtype(dtype)),
        tuple(int(d) for d in shape),
    )
    room = HEADER_BYTES - 10
    if len(text) + 1 > room:
        raise ValueError(f"shape {shape} too long for a {HEADER_BYTES}-byte .npy header")
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", room)
        + (text.ljust(room - 1) + "\n").encode("latin1")
    )


def _read_header(path: Path):
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic[:6] != b"\x93NUMPY":
            raise ValueError(f"{path}: not a .npy file")
        size = struct.unpack("<H" if magic[6] == 1 else "<I", f.read(2 if magic[6] == 1 else 4))[0]
        meta = ast.literal_eval(f.read(size).decode("latin1"))
        offset = f.tell()
    if meta["fortran_order"]:
        raise ValueError(f"{path}: Fortran-ordered arrays are not read row by row")
    return tuple(meta["shape"]), np.dtype(meta["descr"]), offset


_OPEN_LOCK = threading.Lock()


class DiskArray:
    """Rows of a C-ordered .npy file; `a[idx]` (an index array or a slice) reads just those rows."""

    def __init__(self, path, shape=None):
        self.path = Path(path)
        file_shape, self.dtype, self.offset = _read_header(self.path)
        self.shape = tuple(shape) if shape is not None else file_shape
        if math.prod(self.shape) != math.prod(file_shape):
            raise ValueError(f"{path}: cannot view shape {file_shape} as {self.shape}")
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def reshape(self, *shape) -> DiskArray:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        return DiskArray(self.path, shape)

    def _handle(self) -> int:
        with _OPEN_LOCK:  # tf.data calls in from several threads at once
            if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
                self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            return self._fd

    def __getitem__(self, idx) -> np.ndarray:
        fd, n = self._handle(), len(self)
        if isinstance(idx, (int, np.integer)):
            return self[[int(idx)]][0]
        if isinstance(idx, tuple):
            raise TypeError("a DiskArray is indexed by rows only (an index array or a slice)")
        if isinstance(idx, np.ndarray) and idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step == 1:
                out = np.empty((max(0, stop - start),) + self.shape[1:], self.dtype)
                self._read_into(fd, out, start)
                return out
            idx = np.arange(start, stop, step)
        idx = np.asarray(idx, np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"{self.path}: row index out of range for {n} rows")
        out = np.empty((idx.size,) + self.shape[1:], self.dtype)
        for j, i in enumerate(np.where(idx < 0, idx + n, idx)):
            self._read_into(fd, out[j : j + 1], int(i))
        return out

    def _read_into(self, fd: int, out: np.ndarray, first_row: int) -> None:
        view, pos, want = (
            memoryview(out).cast("B"),
            self.offset + first_row * self.row_bytes,
            out.nbytes,
        )
        done = 0
        while done < want:
            got = os.preadv(fd, [view[done:]], pos + done)
            if got <= 0:
                raise OSError(f"{self.path}: file ends before row {first_row + len(out)}")
            done += got

    def __array__(self, dtype=None, copy=None):
        arr = self[:]
        return arr.astype(dtype) if dtype is not None else arr

    def chunks(self, rows: int = 1024):
        for start in range(0, len(self), rows):
            yield self[start : start + rows]

    def fingerprint(self) -> str:
        """The digest feature_cache.fingerprint_array gives the array in memory (read in chunks)."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(str(self.shape).encode())
            for chunk in self.chunks():
                h.update(chunk.data)
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __iter__(self):
        for chunk in self.chunks():
            yield from chunk

    def __del__(self):
        # getattr: an __init__ that failed on a damaged file set neither
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state


class DiskArrayWriter:
    """Appends rows to `<path>.tmp<pid>` and renames it to `path` on close(): a file at `path` is
    always complete. Rows may be fewer than announced (bad images skipped); the header says how
    many."""

    def __init__(self, path, row_shape, dtype, final_shape=None, on_abort=None):
        self.path = Path(path)
        self.final_shape = final_shape
        self.on_abort = on_abort  # e.g. give the bytes claimed for it back to the disk ledger
        self.row_shape, self.dtype = tuple(int(d) for d in row_shape), np.dtype(dtype)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from thaw.data.budget import tmp_tag

        self.tmp = self.path.with_name(f".{self.path.name}.{tmp_tag()}")
        self._f = open(self.tmp, "wb")
        self._f.write(npy_header((0,) + self.row_shape, self.dtype))

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(
                f"rows of shape {rows.shape[1:]} appended to an array of {self.row_shape}"
            )
        self._f.write(rows.data)
        self.rows += len(rows)

    def close(self, shape=None) -> DiskArray:
        """Finish the file (shape: a view of the rows written, e.g. (views, n, ...))."""
        shape = shape if shape is not None else self.final_shape
        shape = tuple(shape) if shape is not None else (self.rows,) + self.row_shape
        if math.prod(shape) != self.rows * math.prod(self.row_shape):
            self.abort()
            raise ValueError(
                f"{self.path}: {self.rows} rows of {self.row_shape} cannot be shaped {shape}"
            )
        self._f.seek(0)
        self._f.write(npy_header(shape, self.dtype))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)
        return DiskArray(self.path)

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            self.tmp.unlink(missing_ok=True)
            if self.on_abort is not None:
                self.on_abort()


class ArrayWriter:
    """DiskArrayWriter's interface over a preallocated array in memory: filling it batch by batch
    holds the array once (a list of batches and their concatenation would hold it twice)."""

    def __init__(self, final_shape, row_shape, dtype=np.float32):
        self.final_shape = tuple(final_shape)
        self.out = np.empty(
            (math.prod(final_shape) // max(1, math.prod(row_shape)),) + tuple(row_shape), dtype
        )
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        self.out[self.rows : self.rows + len(rows)] = rows
        self.rows += len(rows)

    def close(self) -> np.ndarray:
        if self.rows != len(self.out):
            raise ValueError(f"{self.rows} rows written to an array of {len(self.out)}")
        return self.out.reshape(self.final_shape)

    def abort(self) -> None:
        self.out = None
