"""thaw-train against a plain Keras script doing the same training, side by side.

The same folder (the shared cats_vs_dogs; with --quick each takes 400 of its photos: the plain
script the first 400 of a shuffled listing, thaw 200 per class, so not the same 400), same model
(MobileNetV2 alpha 0.35 + pooling + dropout + Dense), same two phases, epochs and learning rates
(1e-4, then 1e-5). Prints wall times, images/s per phase (median epoch, same definition for both)
and the ratios, for thaw with the feature cache off (framework overhead) and on.

This machine drifts by up to 1.8x over minutes, so one plain run against one thaw run can say 0.8
or 1.07 for the same code. The three commands run `--repeats` times, the order reversed every other
round so a drift does not always favour the same one; each ratio is taken within a round (runs
minutes apart) and the summary line gives the median of those ratios.

    python benchmarks/overhead.py [--quick] [--repeats 3]
"""

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, REPO, WEIGHTS, emit, need_shared, timed  # noqa: E402

PLAIN = textwrap.dedent("""
    import json, statistics, sys, time
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
    t, ips = {}, {}
    class EpochTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()
        def on_epoch_end(self, epoch, logs=None):
            self.secs.append(time.perf_counter() - self.t0)
    def timer():
        cb = EpochTimes(); cb.secs = []; return cb
    n = sum(1 for _ in train.unbatch()) if per_class else 2000
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=[acc])
    cb = timer(); t0 = time.perf_counter()
    model.fit(train, validation_data=val, epochs=he, verbose=0, callbacks=[cb])
    t["head"] = time.perf_counter() - t0; ips["head"] = n / statistics.median(cb.secs)
    base.trainable = True
    cut = [l.name for l in base.layers].index(depth_layer)
    for l in base.layers[:cut]:
        l.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=loss, metrics=[acc])
    cb = timer(); t0 = time.perf_counter()
    h = model.fit(train, validation_data=val, epochs=he + fe, initial_epoch=he, verbose=0,
                  callbacks=[cb])
    t["finetune"] = time.perf_counter() - t0; ips["finetune"] = n / statistics.median(cb.secs)
    last = h.history["val_accuracy"][-1]
    print(json.dumps({"phases": t, "images_per_sec": ips, "val_accuracy": last}))
""")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the three runs (default 3)")
    args = ap.parse_args()
    need_shared()
    size, per_class, he, fe = (96, 200, 2, 2) if args.quick else (160, 0, 5, 5)
    with tempfile.TemporaryDirectory(prefix="thaw-overhead-") as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN)

        def plain(_round):
            secs, out = timed(
                [
                    sys.executable,
                    str(script),
                    str(DATA),
                    str(WEIGHTS),
                    str(size),
                    str(per_class),
                    str(he),
                    str(fe),
                    "block_11_expand",
                ],
                REPO,
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            return secs, res["val_accuracy"], res["images_per_sec"]

        def thaw(cache, r):
            run_dir = Path(tmp) / f"thaw-{cache}-{r}"
            cmd = [
                sys.executable,
                "-m",
                "thaw.commands.train",
                "experiment=cats_vs_dogs_local",
                "logger=none",
                f"data.path={DATA}",
                f"backbone.weights={WEIGHTS}",
                f"backbone.image_size={size}",
                "data.test_fraction=0",
                "unfreeze.depth=7",
                f"trainer.head_epochs={he}",
                f"trainer.finetune_epochs={fe}",
                f"trainer.cache_features={cache}",
                f"hydra.run.dir={run_dir}",
                # the plain script's recipe: Adam at 1e-4 then 1e-5, no augmentation, no early stop,
                # last epoch's weights
                "lr.base=1e-4",
                "lr.finetune_factor=0.1",
                "augment=none",
                "trainer.patience=0",
                "trainer.restore_best=false",
            ]
            if per_class:
                cmd.append(f"data.max_per_class={per_class}")
            secs, _ = timed(cmd, REPO)
            m = json.loads((run_dir / "metrics.json").read_text())
            return (
                secs,
                m["val_accuracy"],
                {k: v.get("images_per_sec") or 0 for k, v in m["phases"].items()},
            )

        runs = {
            "plain_keras": plain,
            "thaw_cache_off": lambda r: thaw("false", r),
            "thaw_cache_on": lambda r: thaw("auto", r),
        }
        ratios = {"thaw_cache_off": [], "thaw_cache_on": []}
        walls = {k: [] for k in runs}
        for r in range(args.repeats):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            got = {}
            for name in order:
                secs, acc, ips = runs[name](r)
                got[name] = secs
                walls[name].append(secs)
                emit(
                    figure=name,
                    round=r + 1,
                    wall_seconds=round(secs, 1),
                    val_accuracy=round(acc, 4),
                    images_per_sec={k: round(v, 1) for k, v in ips.items()},
                )
            for name in ratios:
                ratios[name].append(got[name] / got["plain_keras"])
            emit(
                figure="round",
                round=r + 1,
                order=order,
                ratio_to_plain={k: round(v[-1], 3) for k, v in ratios.items()},
            )
        emit(
            figure="overhead_summary",
            repeats=args.repeats,
            quick=args.quick,
            median_wall_seconds={k: round(statistics.median(v), 1) for k, v in walls.items()},
            median_ratio_to_plain={k: round(statistics.median(v), 3) for k, v in ratios.items()},
            ratio_range={k: [round(min(v), 3), round(max(v), 3)] for k, v in ratios.items()},
        )


if __name__ == "__main__":
    main()
