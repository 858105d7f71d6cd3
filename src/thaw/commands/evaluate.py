"""Evaluate a saved model: on its run's held-out test split (once, after a sweep), and on any folder
of class sub-folders (`thaw-evaluate`).

Sweeps optimise validation accuracy; trials never look at the test split. Only the best trial is
evaluated on it, after the sweep, so the reported test accuracy is an honest estimate.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from thaw.errors import DataError
from thaw.runtime.outputs import write_json_atomic

log = logging.getLogger(__name__)


def evaluate_test(run_dir, per_image: bool = False) -> dict[str, Any] | None:
    """{'test_accuracy', 'test_loss', 'num_test'} for the run's model.keras, or None without a test
    split. `per_image`: also 'correct', one 0/1 per test image in split order (paired
    comparisons)."""
    from thaw import data as data_mod
    from thaw.model.inference import as_probabilities

    loaded = load_test_split(run_dir)
    if loaded is None:
        return None
    ds, model, batch_size = loaded
    logits = model.predict(
        data_mod.to_tf(ds.test, batch_size, False, 0).map(lambda x, y: x), verbose=0
    )
    labels = np.asarray(ds.test.labels).reshape(-1)
    loss = _test_loss(ds.num_classes, labels, logits)
    correct = (np.argmax(as_probabilities(logits), axis=1) == labels).astype(int)
    out = {
        "test_accuracy": float(correct.mean()),
        "test_loss": float(loss),
        "num_test": len(ds.test),
    }
    _add_to_metrics(Path(run_dir) / "metrics.json", out)
    if per_image:
        out["correct"] = correct.tolist()
    return out


def load_test_split(run_dir):
    """(data with its test split, the saved model, the run's batch size) of a run, as its test
    figure sees them; None without a test split or model.keras."""
    from thaw.runtime.tf_startup import import_tensorflow

    import_tensorflow()
    import keras

    from thaw import data as data_mod
    from thaw.model.inference import run_config

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    model_path = run_dir / "model.keras"
    if not _has_test(cfg.data) or not model_path.is_file():
        return None
    ds = data_mod.load(
        cfg.data, int(cfg.backbone.image_size), int(cfg.trainer.seed), cfg.trainer.get("cache_dir")
    )
    if ds.test is None or not len(ds.test):
        return None
    model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    return ds, model, int(cfg.data.batch_size)


def _has_test(d) -> bool:
    """Whether the run's data config holds out a test split."""
    return (
        (d.name == "folder" and d.test_fraction > 0)
        or (d.name == "synthetic" and d.num_test > 0)
        or (d.name == "cats_vs_dogs" and d.test_fraction > 0)
    )


def _test_loss(num_classes: int, labels, logits):
    """The training loss on the test split: binary on one logit, else sparse categorical."""
    import keras

    if num_classes == 2:
        return keras.losses.BinaryCrossentropy(from_logits=True)(
            labels.reshape(-1, 1).astype("float32"), logits
        )
    return keras.losses.SparseCategoricalCrossentropy()(labels, logits)


def _add_to_metrics(metrics_path: Path, out: dict[str, Any]) -> None:
    """The test results added to the run's metrics.json, when it has one."""
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        metrics.update(out)
        write_json_atomic(metrics_path, metrics)


# ---------------------------------------------------------------- thaw-evaluate: any folder of
# classes

MAX_THUMBNAILS = 200  # the page stays small on a bad model; the JSON lists every mistake


def _folder_files(folder: str, class_names: list[str]) -> tuple[list[str], list[int], list[str]]:
    """Files and labels of a folder of class sub-folders named like the model's classes."""
    from thaw.data.scan import class_dirs, list_class_dir

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{folder}: not a directory (expected class sub-folders: {', '.join(class_names)})"
        )
    unknown = sorted(set(class_dirs(root)) - set(class_names))
    if unknown:
        raise DataError(
            f"{root}: sub-folder(s) {', '.join(unknown)} are not classes of this model "
            f"({', '.join(class_names)})"
        )
    skipped: list[str] = []
    by_class = {name: list_class_dir(root / name, "skip", skipped) for name in class_dirs(root)}
    if not any(by_class.values()):
        raise DataError(
            f"{root}: no images in class sub-folders (expected: {', '.join(class_names)})"
        )
    files, labels = [], []
    for name, paths in by_class.items():
        files += paths
        labels += [class_names.index(name)] * len(paths)
    return files, labels, skipped


def confusion_report(
    labels: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    k = len(class_names)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (labels, predicted), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp, col, row = cm[i, i], cm[:, i].sum(), cm[i, :].sum()
        per_class[name] = {
            "precision": float(tp / col) if col else None,
            "recall": float(tp / row) if row else None,
            "support": int(row),
        }
    return {
        "accuracy": float((labels == predicted).mean()) if len(labels) else None,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "num_images": int(len(labels)),
    }


def evaluate_folder(target: str, folder: str, out_dir: Path) -> dict[str, Any]:
    """Accuracy, per-class precision/recall, confusion matrix; evaluation.json and
    evaluation.html."""
    from thaw.model.inference import load_trained, probabilities_in_chunks

    trained = load_trained(target, "thaw-evaluate")
    files, labels, skipped = _folder_files(folder, trained.class_names)
    good, probs, problems = probabilities_in_chunks(trained, files, 64, "thaw-evaluate")
    if not good:
        raise DataError(f"{folder}: none of the {len(files)} image file(s) could be decoded")
    good_set = set(good)
    keep = [f in good_set for f in files]
    y = np.asarray(labels)[keep]
    pred = probs.argmax(axis=1)
    result = {
        "model": str(trained.path),
        "folder": str(Path(folder).expanduser()),
        "classes": trained.class_names,
        **confusion_report(y, pred, trained.class_names),
        "bad_files": {**{f: _why_skipped(f) for f in skipped}, **problems},
        **seen_by_run(trained.run_dir, good, y == pred),
    }
    result["misclassified"] = [
        {
            "path": f,
            "true": trained.class_names[t],
            "predicted": trained.class_names[p],
            "probability": float(pr[p]),
        }
        for f, t, p, pr in zip(good, y, pred, probs)
        if t != p
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "evaluation.json", result)
    from thaw.runtime.outputs import write_text_atomic

    write_text_atomic(out_dir / "evaluation.html", evaluation_html(result))
    return result


def _why_skipped(path: str) -> str:
    """What the folder scan found wrong with a file it skipped."""
    from thaw.data.scan import sniff_image

    try:
        return sniff_image(path) or "skipped while scanning"
    except OSError:
        return "not a regular file (broken or looping link?)"


def seen_by_run(run_dir: Path | None, files: list[str], correct: np.ndarray) -> dict[str, Any]:
    """`seen_by_run`: how many of `files` are the run's own training, validation and test images
    (thaw.data.seen), and `accuracy_on_new`, the accuracy on the others; both None where not
    known."""
    from thaw.data.seen import split_counts, splits_of
    from thaw.model.inference import run_config

    try:
        found = splits_of(run_config(run_dir, needs=("data",)).data, files) if run_dir else None
    except Exception as exc:  # advisory: an older or partial run config must not end the command
        log.debug("seen_by_run: not compared (%s)", exc)
        found = None
    if found is None:
        return {"seen_by_run": None, "accuracy_on_new": None}
    where = found[1]
    new = np.array([w not in ("train", "validation") for w in where], bool)
    on_new = {"accuracy": float(correct[new].mean()) if new.any() else None}
    return {
        "seen_by_run": split_counts(*found),
        "accuracy_on_new": {**on_new, "num_images": int(new.sum())},
    }


def seen_warning(r: dict[str, Any]) -> str | None:
    """One sentence when the evaluated images are not new to the model."""
    seen = r.get("seen_by_run") or {}
    parts = [
        f"{seen[k]} {what}"
        for k, what in (
            ("train", "were trained on"),
            (
                "validation",
                "are validation images that picked the model (its epoch, or the sweep's trial)",
            ),
        )
        if seen.get(k)
    ]
    if not parts:
        return None
    return (
        f"of these {r['num_images']} images, {' and '.join(parts)}: the accuracy is "
        f"optimistic; {_honest_figure(seen, r.get('accuracy_on_new') or {})}"
    )


def _honest_figure(seen: dict[str, int], on_new: dict[str, Any]) -> str:
    """The accuracy on the images that did not train or choose the model, and which they are."""
    n_new, n_test = on_new.get("num_images") or 0, seen.get("test", 0)
    if not n_new:
        return "evaluate on images the run never read for an honest figure"
    if n_test == n_new:
        which = "its held-out test split: test_accuracy in metrics.json"
    elif n_test:
        which = f"{n_test} of them its held-out test split"
    else:
        which = "images the run never read"
    return f"on the other {n_new} ({which}), the accuracy is {on_new['accuracy']:.4f}"


def _thumbnail(path: str, size: int = 128) -> str:
    import base64
    import io

    from PIL import Image, ImageOps

    from thaw.data.photos import orientation_of

    with Image.open(path) as im:
        if orientation_of(im) != 1:  # turned as the model saw it, by the same rule
            im = ImageOps.exif_transpose(im)
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _mistakes_html(mistakes: list[dict[str, Any]]) -> str:
    """The first MAX_THUMBNAILS misclassified images as captioned thumbnails."""
    import html

    esc = html.escape
    thumbs = []
    for m in mistakes[:MAX_THUMBNAILS]:
        try:
            src = _thumbnail(m["path"])
        except Exception:
            src = ""
        thumbs.append(
            f"<figure><img src='{src}' "
            f"alt='{esc(m['path'])}'><figcaption>{esc(Path(m['path']).name)}"
            f"<br>true {esc(m['true'])}, predicted {esc(m['predicted'])} "
            f"({100 * m['probability']:.0f} %)"
            "</figcaption></figure>"
        )
    return "".join(thumbs)


def evaluation_html(r: dict[str, Any]) -> str:
    """A self-contained page: summary, per-class table, confusion matrix, mistakes as thumbnails."""
    import html

    esc = html.escape
    names = r["classes"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    rows = "".join(
        f"<tr><td>{esc(n)}</td><td>{pct(c['precision'])}</td><td>{pct(c['recall'])}</td>"
        f"<td>{c['support']}</td></tr>"
        for n, c in r["per_class"].items()
    )
    cm = "".join(
        f"<tr><th>{esc(n)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for n, row in zip(names, r["confusion_matrix"])
    )
    more = len(r["misclassified"]) - MAX_THUMBNAILS
    bad = "".join(f"<li>{esc(f)}: {esc(w)}</li>" for f, w in r["bad_files"].items())
    n_bad = len(r["bad_files"])
    bad_section = f"<h2>Bad files ({n_bad})</h2><ul>{bad}</ul>" if bad else ""
    warning = seen_warning(r)
    seen = f"<p><strong>Not new images:</strong> {esc(warning)}</p>" if warning else ""
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>thaw evaluation</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
figure {{ display: inline-block; width: 150px; margin: 4px; font-size: 12px; vertical-align: top; }}
figcaption {{ overflow-wrap: anywhere; }} img {{ max-width: 140px; }}</style></head><body>
<h1>Evaluation: {pct(r["accuracy"])} accuracy on {r["num_images"]} images</h1>
<p>Model {esc(r["model"])}<br>Folder {esc(r["folder"])}</p>{seen}
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>images</th></tr>
{rows}</table>
<h2>Confusion matrix</h2><p>Rows: true class; columns: predicted class.</p>
<table><tr><th></th>{"".join(f"<th>{esc(n)}</th>" for n in names)}</tr>{cm}</table>
<h2>Misclassified ({len(r["misclassified"])})</h2>{_mistakes_html(r["misclassified"])}
{f"<p>and {more} more (listed in evaluation.json)</p>" if more > 0 else ""}
{bad_section}
</body></html>
"""


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    from thaw.model.inference import run_command

    parser = argparse.ArgumentParser(
        prog="thaw-evaluate",
        description=(
            "Evaluate a trained thaw model on a folder of class sub-folders: accuracy, per-class "
            "precision and "
            "recall, confusion matrix; writes evaluation.json and evaluation.html (misclassified "
            "thumbnails)."
        ),
    )
    parser.add_argument("model", help="run dir, sweep dir (its best trial) or model.keras")
    parser.add_argument("folder", help="folder of class sub-folders named like the model's classes")
    parser.add_argument("--out", default="evaluation", help="output dir (default: ./evaluation)")
    args = parser.parse_args(argv)

    def _run() -> int:
        from thaw.runtime.outputs import output_dir

        r = evaluate_folder(args.model, args.folder, output_dir(args.out))
        per = ", ".join(
            f"{n} P {_ratio(c['precision'])} R {_ratio(c['recall'])}"
            for n, c in r["per_class"].items()
        )
        print(
            f"accuracy {r['accuracy']:.4f} on {r['num_images']} images ({per}); "
            f"{len(r['bad_files'])} bad file(s); {Path(args.out) / 'evaluation.html'}"
        )
        warning = seen_warning(r)
        if warning:
            print(f"thaw-evaluate: warning: {warning}", file=sys.stderr)
        return 0

    return run_command("thaw-evaluate", _run)


if __name__ == "__main__":
    sys.exit(main())
