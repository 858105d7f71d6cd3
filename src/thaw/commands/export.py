"""`thaw-export`: a trained model as a TensorFlow SavedModel and TensorFlow Lite files (float32,
float16, int8), each checked against the Keras model on real images before it is trusted.

int8 is full-integer quantization calibrated on a representative sample of the run's training
images (inputs and outputs stay float, so the file is a drop-in for the float ones). Every export is
run on the run's validation images and compared with Keras: top-1 agreement and the largest absolute
difference of a class probability; both go into export.json with the file sizes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from thaw.errors import ConfigError
from thaw.model.inference import (
    as_probabilities,
    decode_images,
    list_images,
    load_trained,
    run_command,
)
from thaw.runtime.tf_startup import native_stderr_filtered

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8")
FEW_CHECKS = 50  # below this, an agreement figure is worth a warning
CALIBRATION_IMAGES = 200  # what tflite_int8 is calibrated on unless --calibration-images says


def sample_images(
    trained, data: str | None, n_rep: int, n_check: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """(representative images, check images, where they came from): the run's own train/validation
    splits, or a folder given with --data (split by order: first for calibration, rest for
    checks)."""
    if data:  # only the files it uses are decoded (a tenth more, for bad ones): any folder fits
        files = list_images([data])
        want = n_rep + n_check
        order = np.random.default_rng(0).permutation(len(files))[: want + want // 10 + 8]
        images, good, _ = decode_images([files[i] for i in order], trained.image_size)
        cut = min(n_rep, max(len(good) // 2, len(good) - n_check))
        return images[:cut], images[cut : cut + n_check], data
    if trained.run_dir is None:
        raise ConfigError(
            f"{trained.path}: no run config next to the model; give images with --data FOLDER"
        )
    from thaw import data as data_mod
    from thaw.model.inference import run_config

    cfg = run_config(trained.run_dir)
    ds = data_mod.load(
        cfg.data, trained.image_size, int(cfg.trainer.seed), cfg.trainer.get("cache_dir")
    )
    rng = np.random.default_rng(0)
    rep = ds.train.images[np.sort(rng.permutation(len(ds.train))[:n_rep])]
    check = ds.val.images[
        np.sort(rng.permutation(len(ds.val))[:n_check])
    ]  # both classes, any n_check
    return rep, check, f"run {trained.run_dir} (train: calibration, validation: checks)"


def _converter(saved_model: Path, fmt: str, rep: np.ndarray):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if fmt == "tflite_fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite_int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

        def representative():
            for img in rep:
                yield [img[None].astype(np.float32)]

        conv.representative_dataset = representative
    return conv


def _interpreter(path: Path):
    try:  # LiteRT, TensorFlow Lite's successor, where installed; else TensorFlow's own interpreter
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path))


def run_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    interp = _interpreter(path)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for img in images:
        interp.set_tensor(inp["index"], img[None].astype(np.float32))
        interp.invoke()
        rows.append(interp.get_tensor(out["index"])[0])
    return np.asarray(rows)


def run_saved_model(path: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # keep it referenced: its variables die with it
    return np.concatenate(
        [
            loaded.serve(tf.constant(images[i : i + 64].astype(np.float32))).numpy()
            for i in range(0, len(images), 64)
        ]
    )


def compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    a, b = as_probabilities(reference), as_probabilities(other)
    return {
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(a - b).max()),
    }


def _size(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def export(
    target: str,
    out: str | None,
    formats: list[str],
    data: str | None,
    n_rep: int,
    n_check: int,
) -> dict[str, Any]:
    trained = load_trained(target, "thaw-export")
    out_dir = Path(out) if out else (trained.run_dir or trained.path.parent) / "export"
    rep, check, source = sample_images(trained, data, n_rep, n_check)
    if not len(check) or ("tflite_int8" in formats and not len(rep)):
        raise ConfigError(f"{source}: too few images to calibrate and check the exports")
    if len(check) < FEW_CHECKS:
        log.warning(
            "export: checked on only %d image(s) from %s: agreement on so few says little "
            "(--data a folder with more, or --check-images)",
            len(check),
            source,
        )
    reference = trained.model.predict(check.astype(np.float32), batch_size=64, verbose=0)
    import shutil
    import tempfile

    from thaw.runtime.outputs import write_json_atomic

    # every output is made beside the old ones, then moved in: a killed export leaves the last
    # export whole (its files and export.json agree), never a mix
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".thaw-export-", dir=out_dir))
    try:
        result = _export_all(trained, scratch, formats, rep, check, reference, source)
        _move_in(result, scratch, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_json_atomic(out_dir / "export.json", result)
    return result


def _move_in(result: dict[str, Any], scratch: Path, out_dir: Path) -> None:
    """Each export into out_dir, replacing the earlier one of its name (an old SavedModel folder is
    moved into the scratch folder first, to be removed with it)."""
    for entry in result["exports"].values():
        made = Path(entry["path"])
        final = out_dir / made.name
        if final.is_dir():
            final.rename(scratch / f"old-{made.name}")
        os.replace(made, final)
        entry["path"] = str(final)


def _export_all(trained, scratch: Path, formats, rep, check, reference, source) -> dict[str, Any]:
    saved = scratch / "saved_model"  # what TFLite converts from, kept when asked for
    trained.model.export(str(saved), format="tf_saved_model", verbose=False)
    result: dict[str, Any] = {
        "model": str(trained.path),
        "keras_bytes": trained.path.stat().st_size,
        "checked_on": {"images": int(len(check)), "source": source},
        "calibration_images": int(len(rep)),
        "exports": {},
    }
    for fmt in formats:
        t0 = time.perf_counter()
        if fmt == "saved_model":
            path, outputs = saved, run_saved_model(saved, check)
        else:
            path = scratch / f"model_{fmt.split('_')[1]}.tflite"
            from thaw.runtime.outputs import write_bytes_atomic

            with native_stderr_filtered():
                write_bytes_atomic(path, _converter(saved, fmt, rep).convert())
                outputs = run_tflite(path, check)
        result["exports"][fmt] = {
            "path": str(path),
            "bytes": _size(path),
            **compare(reference, outputs),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("%s: %s", fmt, result["exports"][fmt])
    return result


def _formats(text: str) -> list[str]:
    """--formats as a list, each one known."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(
            f"--formats: unknown {', '.join(bad) or '(none given)'}; choose from "
            f"{', '.join(FORMATS)}"
        )
    return formats


def _calibration(args, formats: list[str]) -> int:
    """How many images to calibrate on: only tflite_int8 is calibrated (a count given without it
    changes nothing, and is said so)."""
    if "tflite_int8" in formats:
        return args.calibration_images or CALIBRATION_IMAGES
    if args.calibration_images is not None:
        log.warning(
            "--calibration-images: ignored, only tflite_int8 is calibrated and --formats is %s",
            ",".join(formats),
        )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thaw-export",
        description=(
            "Export a trained thaw model to SavedModel and TensorFlow Lite (fp32, fp16, int8), "
            "each checked against the Keras model on real images; writes export.json."
        ),
    )
    parser.add_argument("model", help="run dir, sweep dir (its best trial) or model.keras")
    parser.add_argument("--out", default=None, help="output dir (default: <run dir>/export)")
    parser.add_argument(
        "--formats", default=",".join(FORMATS), help=f"comma-separated, from {', '.join(FORMATS)}"
    )
    parser.add_argument(
        "--data", default=None, help="images for calibration and checks (default: the run's data)"
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help=f"images tflite_int8 is calibrated on (default {CALIBRATION_IMAGES})",
    )
    parser.add_argument("--check-images", type=int, default=1000)
    return parser


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    for flag, value in (
        ("--calibration-images", args.calibration_images),
        ("--check-images", args.check_images),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    formats = _formats(args.formats)
    if args.out:
        from thaw.runtime.outputs import output_dir

        output_dir(args.out)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    res = export(
        args.model, args.out, formats, args.data, _calibration(args, formats), args.check_images
    )
    print(
        f"checked on {res['checked_on']['images']} image(s); model.keras "
        f"{res['keras_bytes'] / 1e6:.2f} MB"
    )
    for fmt, e in res["exports"].items():
        print(
            f"{fmt:12s} {e['bytes'] / 1e6:7.2f} MB  top-1 agreement "
            f"{100 * e['top1_agreement']:6.2f} %  "
            f"max |dp| {e['max_abs_prob_diff']:.4f}  {e['path']}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("thaw-export", lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
