"""Would averaging each test image with its mirror image lift a saved run's test accuracy?

    python benchmarks/flip_tta.py SWEEP_DIR/trial_15 PROBE_DIR/cats_vs_dogs-probe ...

For each run directory (a thaw run with `model.keras` and a held-out test split, such as a sweep's
best trial or `recipes.py`'s probe), one JSON line: test accuracy on the images as they are, on
their horizontal mirrors, and on the mean of both probabilities (flip test-time augmentation). It
measures whether flip TTA is a lever for the cats-vs-dogs goal; thaw's evaluation does not use it.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402


def flip_accuracies(run_dir: Path) -> dict:
    """Test accuracy plain, mirrored and averaged, on the split and model `evaluate_test` uses."""
    import numpy as np

    from thaw import data as data_mod
    from thaw.commands.evaluate import load_test_split
    from thaw.model.inference import as_probabilities

    loaded = load_test_split(run_dir)
    if loaded is None:
        sys.exit(f"{run_dir}: the run holds out no test split")
    ds, model, batch_size = loaded
    import tensorflow as tf  # after thaw's start-up settings

    images = data_mod.to_tf(ds.test, batch_size, False, 0).map(lambda x, y: x)
    plain = as_probabilities(model.predict(images, verbose=0))
    mirrored = as_probabilities(
        model.predict(images.map(lambda x: tf.reverse(x, axis=[2])), verbose=0)
    )
    labels = np.asarray(ds.test.labels).reshape(-1)

    def accuracy(probs):
        return float((probs.argmax(axis=1) == labels).mean())

    return {
        "plain": accuracy(plain),
        "mirrored": accuracy(mirrored),
        "flip_tta": accuracy(plain + mirrored),
        "num_test": len(labels),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    args = ap.parse_args()
    missing = [str(d) for d in args.run_dirs if not (d / "model.keras").is_file()]
    if missing:
        sys.exit(f"no model.keras in: {', '.join(missing)}")
    for run_dir in args.run_dirs:
        emit(benchmark="flip_tta", run=str(run_dir), **flip_accuracies(run_dir))


if __name__ == "__main__":
    main()
