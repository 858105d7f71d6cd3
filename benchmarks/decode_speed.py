"""What decoding photos upright costs: thaw.data.decode.decode_files on the shared cats_vs_dogs
photos (4000 JPEGs), and the part of it that reads each file's header (EXIF orientation, format)
with Pillow.

    python benchmarks/decode_speed.py                  # 160 px, 3 rounds
    python benchmarks/decode_speed.py --size 224 --rounds 5
    git worktree add /tmp/before 67f4655
    python benchmarks/decode_speed.py --against /tmp/before     # before / after, side by side

Each round times the whole decode (header pass, TensorFlow decode and resize, then the turn) and
then the header pass alone, one after the other, so the machine's drift touches both alike. Each
round's process reads the photos once before it times anything (into the page cache).
--against DIR runs each round twice, each in its own process: with the thaw of the checkout DIR
and with this one, which goes first alternating from round to round. One JSON line per round and
a summary line; --out appends them to a file.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, emit, need_shared  # noqa: E402


def photo_files() -> list[str]:
    return sorted(str(p) for p in DATA.glob("*/*/*.jpg"))


def one_round(size: int, r: int) -> dict:
    """One timed decode of every photo, and the header pass alone (where the thaw imported has
    one)."""
    from thaw.data import decode

    try:
        from thaw.data.photos import read_header
    except ImportError:  # a checkout from before photos were turned upright
        read_header = None

    files = photo_files()
    for f in files:  # into the page cache
        Path(f).read_bytes()
    decode.decode_files(files[:64], size, "error", [])  # TensorFlow's start-up, not timed
    t0 = time.perf_counter()
    _, ok = decode.decode_files(files, size, "error", [])
    decode_s = time.perf_counter() - t0
    header_s = turned = None
    if read_header is not None:
        t0 = time.perf_counter()
        turned = sum(read_header(f).orientation != 1 for f in files)
        header_s = round(time.perf_counter() - t0, 3)
    return dict(
        bench="decode_speed",
        code=checkout_commit(Path(decode.__file__).parents[3]),
        round=r,
        images=int(ok.sum()),
        size=size,
        decode_s=round(decode_s, 3),
        header_pass_s=header_s,
        turned_photos=turned,
    )


def checkout_commit(root: Path) -> str:
    """The checkout's commit, with "-dirty" when it has uncommitted changes."""

    def git(*a):
        return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True).stdout

    return git("rev-parse", "--short", "HEAD").strip() + (
        "-dirty" if git("status", "--porcelain") else ""
    )


def in_process(src: Path, size: int, r: int) -> dict:
    """one_round in a fresh process importing thaw from the checkout `src`."""
    env = dict(os.environ, PYTHONPATH=str(src / "src"), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, __file__, "--size", str(size), "--round-only", str(r)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for code in dict.fromkeys(row["code"] for row in rows):
        mine = [row for row in rows if row["code"] == code]
        times = sorted(row["decode_s"] for row in mine)
        out.append(
            dict(
                bench="decode_speed",
                summary=True,
                code=code,
                size=mine[0]["size"],
                images=mine[0]["images"],
                rounds=len(mine),
                decode_s_best=times[0],
                decode_s_median=round(statistics.median(times), 3),
                images_per_s=round(mine[0]["images"] / times[0], 1),
            )
        )
    return out


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--against", type=Path, default=None, help="an older checkout to compare")
    ap.add_argument("--round-only", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    need_shared()
    if args.round_only is not None:
        emit(**one_round(args.size, args.round_only))
        return
    here = Path(__file__).resolve().parents[1]
    codes = [args.against.resolve(), here] if args.against else [here]
    rows = []
    for r in range(args.rounds):
        for src in codes if r % 2 == 0 else codes[::-1]:  # neither always goes first
            rows.append(in_process(src, args.size, r))
            emit(**rows[-1])
    summary = summarize(rows)
    for line in summary:
        emit(**line)
    if args.out:
        with open(args.out, "a") as f:
            for row in [*rows, *summary]:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
