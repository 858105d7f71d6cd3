"""`thaw-predict`: class probabilities for new photos, as CSV (one row per file, bad files
included)."""

from __future__ import annotations

import argparse
import csv
import io
import sys

from thaw.errors import ConfigError, DataError
from thaw.model.inference import list_images, load_trained, probabilities_in_chunks, run_command


def predict_rows(target: str, inputs: list[str], batch_size: int = 64):
    """(header, rows): path, predicted class, probability per class, error (bad files: error
    only)."""
    trained = load_trained(target, "thaw-predict")
    files = list_images(inputs, "thaw-predict")
    good, probs, problems = probabilities_in_chunks(trained, files, batch_size, "thaw-predict")
    if not good:
        first = next(iter(problems.items()))
        raise DataError(
            f"none of the {len(files)} file(s) could be read as an image (first: {first[0]}: "
            f"{first[1]})"
        )
    by_file = dict(zip(good, probs))
    names = trained.class_names
    rows = []
    for f in files:
        if f in by_file:
            p = by_file[f]
            rows.append([f, names[int(p.argmax())], *[f"{v:.6f}" for v in p], ""])
        else:
            rows.append([f, "", *([""] * len(names)), problems.get(f, "not predicted")])
    return ["path", "predicted", *[f"prob_{n}" for n in names], "error"], rows, trained


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="thaw-predict",
        description="Predict classes for image files or folders with a trained thaw model.",
    )
    parser.add_argument("model", help="run dir, sweep dir (its best trial) or model.keras")
    parser.add_argument(
        "inputs", nargs="+", help="image files and/or folders (searched recursively)"
    )
    parser.add_argument("--out", default=None, help="CSV file to write (default: stdout)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per prediction step (default: 64)"
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.out:
        from thaw.runtime.outputs import output_file

        output_file(args.out, "--out", "predictions.csv")
    header, rows, trained = predict_rows(args.model, args.inputs, args.batch_size)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    if args.out:
        from thaw.runtime.outputs import write_text_atomic

        write_text_atomic(args.out, buf.getvalue())
    else:
        sys.stdout.write(buf.getvalue())
    bad = sum(1 for r in rows if r[-1])
    print(
        f"thaw-predict: {len(rows) - bad} predicted, {bad} bad file(s), model {trained.path}"
        + (f", written to {args.out}" if args.out else ""),
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("thaw-predict", lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
