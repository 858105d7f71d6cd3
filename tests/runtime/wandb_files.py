"""Read what an offline W&B run wrote (its run-<id>.wandb file), without W&B's servers: the file is
a LevelDB-style log of protobuf records (W&B's own wandb_internal_pb2.Record).

W&B's service writes the file on its own, so a reader can find it mid-write:
`read` waits (bounded) until every record's checksum holds and the run's exit record is there."""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768


class TornFile(Exception):
    """The file ends inside a record, or a record's checksum fails: it is still being written."""


def _chunks(data: bytes):
    """The records of a LevelDB log: 7-byte headers (crc, length, type) in 32 KiB blocks, each
    chunk's CRC-32 (W&B's "IEEE" variant) taken over its type byte and data."""
    pos, pending = 7, b""  # past W&B's own 7-byte file header
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if pos > len(data) or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise TornFile(f"record at byte {pos - length - 7} of {len(data)}")
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""


def _key(item) -> str:
    return ".".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)
    exit_code: int | None = None


def read(path: Path, timeout: float = 30.0) -> OfflineRun:
    """The finished run in `path`, once W&B's service has written all of it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = Path(path).read_bytes()
            assert data[:4] == b":W&B"[: len(data)], f"{path} is no W&B run file: {data[:7]!r}"
            if len(data) < 7:
                raise TornFile(f"{path}: the file header is not written yet")
            out = _parse(data)
            if out.exit_code is not None or time.monotonic() > deadline:
                return out
        except TornFile:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _parse(data: bytes) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    out = OfflineRun()
    for chunk in _chunks(data):
        rec = pb.Record()
        rec.ParseFromString(chunk)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.run_id, out.name, out.group, out.job_type = (
                r.run_id,
                r.display_name,
                r.run_group,
                r.job_type,
            )
            out.tags = list(r.tags)
            out.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            out.config.update({_key(u): json.loads(u.value_json) for u in rec.config.update})
        elif kind == "summary":
            out.summary.update({_key(u): json.loads(u.value_json) for u in rec.summary.update})
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "artifact":
            a = rec.artifact
            files = [c.path for c in a.manifest.contents]
            out.artifacts.append({"name": a.name, "type": a.type, "files": files})
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    return out


def offline_runs(folder: Path) -> list[Path]:
    """The offline runs `wandb sync` would upload from a wandb/ folder."""
    return sorted(Path(folder).glob("offline-run-*/run-*.wandb"))
