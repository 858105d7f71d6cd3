"""thaw-train against a plain Keras script doing the same training, side by side.

Same data (the shared cats_vs_dogs folder), same model (MobileNetV2 alpha 0.35 + pooling + dropout +
Dense), same two phases and epochs. Prints wall times, images/s per phase and the ratios, for thaw
with the feature cache off (framework overhead) and on.

    python benchmarks/overhead.py [--quick]
"""

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, REPO, WEIGHTS, emit, need_shared, timed  # noqa: E402

PLAIN = textwrap.dedent('''
    import json, sys, time
    import keras, tensorflow as tf
    data, weights, size, per_class, he, fe, depth_layer = sys.argv[1:8]
    size, he, fe = int(size), int(he), int(fe)
    per_class = int(per_class)
    keras.utils.set_random_seed(42)
    def take(split):
        files = keras.utils.image_dataset_from_directory(f"{data}/{split}", image_size=(size, size),
                                                         batch_size=None, shuffle=True, seed=0)
        if per_class:
            files = files.take(2 * per_class)
        return files.cache()
    train = take("train").shuffle(4000, seed=42).batch(32).prefetch(tf.data.AUTOTUNE)
    val = take("validation").batch(32).prefetch(tf.data.AUTOTUNE)
    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=weights,
                                          input_shape=(size, size, 3))
    base.trainable = False
    inp = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    acc = keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")
    t = {}
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=[acc])
    t0 = time.perf_counter(); model.fit(train, validation_data=val, epochs=he, verbose=0)
    t["head"] = time.perf_counter() - t0
    base.trainable = True
    cut = [l.name for l in base.layers].index(depth_layer)
    for l in base.layers[:cut]:
        l.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss, metrics=[acc])
    t0 = time.perf_counter(); h = model.fit(train, validation_data=val, epochs=he + fe, initial_epoch=he, verbose=0)
    t["finetune"] = time.perf_counter() - t0
    print(json.dumps({"phases": t, "val_accuracy": h.history["val_accuracy"][-1]}))
''')


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    need_shared()
    size, per_class, he, fe = (96, 200, 2, 2) if args.quick else (160, 0, 5, 5)
    n_train = 2 * per_class if per_class else 2000
    with tempfile.TemporaryDirectory(prefix="thaw-overhead-") as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN)
        secs_plain, out = timed([sys.executable, str(script), str(DATA), str(WEIGHTS), str(size), str(per_class),
                                 str(he), str(fe), "block_11_expand"], REPO)
        plain = json.loads(out.stdout.strip().splitlines()[-1])
        emit(figure="plain_keras", wall_seconds=round(secs_plain, 1), val_accuracy=plain["val_accuracy"],
             images_per_sec={k: round(n_train * (he if k == "head" else fe) / v, 1) for k, v in plain["phases"].items()})
        for cache in ("false", "auto"):
            run_dir = Path(tmp) / f"thaw-{cache}"
            cmd = [sys.executable, "-m", "thaw.cli", "experiment=cats_vs_dogs_local", "logger=none",
                   f"data.path={DATA}", f"backbone.weights={WEIGHTS}", f"backbone.image_size={size}",
                   "data.test_fraction=0", "unfreeze.depth=7", f"trainer.head_epochs={he}",
                   f"trainer.finetune_epochs={fe}", f"trainer.cache_features={cache}", f"hydra.run.dir={run_dir}"]
            if per_class:
                cmd.append(f"data.max_per_class={per_class}")
            secs, _ = timed(cmd, REPO)
            m = json.loads((run_dir / "metrics.json").read_text())
            emit(figure="thaw_train", cache=cache, wall_seconds=round(secs, 1), val_accuracy=m["val_accuracy"],
                 images_per_sec={k: round(v.get("images_per_sec") or 0, 1) for k, v in m["phases"].items()},
                 ratio_to_plain=round(secs / secs_plain, 2))


if __name__ == "__main__":
    main()
