"""What a new fine-tuning depth's first step costs: graph ops, Python trace, first instantiation, a
steady step, and the phase's first Keras epoch against its next ones, with each optimizer form.

    python benchmarks/trace_cost.py                   # depth 8, 96 px: Keras' Adam, fused Adam, SGD
    python benchmarks/trace_cost.py --depth 12 --size 160
    python benchmarks/trace_cost.py --variants fused_adam --grappler '{}'
        '{"disable_meta_optimizer": true}'
        # the same with TensorFlow's graph optimizer options (one process each)

Each variant runs in its own process (nothing traced or instantiated before it), on the fit model
thaw trains at that depth on cached activations (the top `depth` blocks of MobileNetV2 alpha 0.35
and the linear head, from the boundary activation), with random inputs of the boundary's shape. One
JSON line per variant. Needs ../shared (the weights file).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, WEIGHTS, emit, need_shared  # noqa: E402

VARIANTS = ("keras_adam", "fused_adam", "sgd")


def fit_model(depth: int, size: int):
    """thaw's fit model for `depth` on cached activations, and the boundary's shape."""
    import keras

    from thaw.config.schema import compose_train
    from thaw.model import unfreeze
    from thaw.model.backbones import get_spec
    from thaw.model.classifier import build_classifier
    from thaw.train.frozen_pass import boundary_tensor

    cfg = compose_train(
        [
            "experiment=cats_vs_dogs_local",
            f"backbone.image_size={size}",
            f"backbone.weights={WEIGHTS}",
        ]
    )
    clf = build_classifier(cfg, 2)
    unfreeze.freeze_all(clf.base)
    unfreeze.apply(clf.base, get_spec("mobilenet_v2"), "top_blocks", depth)
    bt = boundary_tensor(clf.base, {layer.name for layer in clf.base.layers if layer.trainable})
    if bt is None:
        raise SystemExit(
            f"depth {depth}: no single boundary (the whole base trains on images); pick a smaller "
            "depth"
        )
    top, head = keras.Model(bt, clf.base.output), keras.Model(clf.base_output, clf.model.output)
    inp = keras.Input(tuple(bt.shape[1:]))
    return keras.Model(inp, head(top(inp, training=False))), tuple(bt.shape[1:])


def child(variant: str, depth: int, size: int, grappler: dict):
    import keras
    import numpy as np
    import tensorflow as tf

    from thaw.model.optimizers import make

    if grappler:
        tf.config.optimizer.set_experimental_options(grappler)

    model, shape = fit_model(depth, size)
    opt = {
        "keras_adam": lambda: make("adam", 1e-4, fused=False),
        "fused_adam": lambda: make("adam", 1e-4, fused=True),
        "sgd": lambda: make("sgd", 1e-4),
    }[variant]
    loss, acc = (
        keras.losses.BinaryCrossentropy(from_logits=True),
        keras.metrics.BinaryAccuracy(threshold=0.0),
    )
    model.compile(optimizer=opt(), loss=loss, metrics=[acc])
    x = np.random.default_rng(0).normal(size=(320,) + shape).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(
        (x, (np.arange(320) % 2).astype("float32")[:, None])
    ).batch(32)
    model._symbolic_build(
        data_batch=ds.element_spec
    )  # as thaw.model.compiled.build_state: one trace, not two
    step, batch = tf.function(lambda b: model.train_step(b)), next(iter(ds))
    t0 = time.perf_counter()
    graph = step.get_concrete_function(batch).graph
    t1 = time.perf_counter()
    step(batch)
    t2 = time.perf_counter()
    for _ in range(5):
        step(batch)
    steady = (time.perf_counter() - t2) / 5
    # the same layers through Keras fit on a new wrapper model: the first epoch against the next
    # ones
    wrapped = keras.Model(model.inputs, model.outputs)
    wrapped.compile(
        optimizer=opt(), loss=loss, metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)]
    )
    wrapped._symbolic_build(data_batch=ds.element_spec)
    epochs = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: epochs.append(time.perf_counter()),
        on_epoch_end=lambda e, logs: epochs.append(time.perf_counter()),
    )
    wrapped.fit(ds, validation_data=ds, epochs=3, verbose=0, callbacks=[timer])
    secs = [round(epochs[i + 1] - epochs[i], 2) for i in range(0, len(epochs), 2)]
    emit(
        variant=variant,
        grappler=grappler,
        depth=depth,
        size=size,
        trainable_variables=len(model.trainable_variables),
        graph_ops=len(graph.get_operations()),
        python_trace_s=round(t1 - t0, 2),
        first_instantiation_s=round(t2 - t1 - steady, 2),
        steady_step_s=round(steady, 4),
        fit_epochs_s=secs,
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument(
        "--grappler",
        nargs="+",
        default=["{}"],
        metavar="JSON",
        help='tf.config.optimizer.set_experimental_options for each run, e.g. \'{"remapping": '
        "false}'",
    )
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    need_shared()
    if args.child:
        return child(args.child, args.depth, args.size, json.loads(args.grappler[0]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for grappler in args.grappler:
        for variant in args.variants:
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--depth",
                    str(args.depth),
                    "--size",
                    str(args.size),
                    "--grappler",
                    grappler,
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("{")), None)
            if res.returncode or line is None:
                raise SystemExit(
                    f"{variant} (grappler {grappler}) failed:\n" + (res.stdout + res.stderr)[-3000:]
                )
            print(json.dumps(json.loads(line)), flush=True)


if __name__ == "__main__":
    main()
