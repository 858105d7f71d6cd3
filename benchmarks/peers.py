"""The same depth x lr search with thaw and with the tools users would pick instead.

    pip install -e ".[cpu,dev,bench]"
    python benchmarks/peers.py --quick     # 6 trials, 96 px, 150 images per class and split,
                                             3 + 3 epochs
    python benchmarks/peers.py             # 8 trials, 160 px, all shared photos, 5 + 5 epochs
    python benchmarks/peers.py --quick --repeats 3   # three seeds per tool (see below)
    python benchmarks/peers.py --quick --repeats 5 --first-seed 15   # five more: seeds 15-19

Same data (the shared cats_vs_dogs folder, thaw's deterministic splits, decoded once per process),
same model (MobileNetV2 alpha 0.35 from the shared ImageNet weights, linear head with dropout 0.2),
same recipe (head at lr, then the top `depth` blocks at lr x 0.1), same space (depth 0..19, lr
log-uniform 1e-5..1e-2), same objective (best validation accuracy of the run) and trial budget:

- thaw:          thaw-train --multirun sweep=depth_lr (feature cache, StepMedianPruner)
- kt_bayesian:   Keras Tuner BayesianOptimization, a two-phase HyperModel
- kt_hyperband:  Keras Tuner Hyperband, max_epochs = head + fine-tune epochs (it picks its own
                 number of trials; reported)
- optuna_keras:  Optuna TPE + MedianPruner, plain Keras, optuna-integration's KerasPruningCallback

Each tool runs in its own process, timed from its start. One JSON line per tool: wall time, best
validation accuracy, trials, and the time until its running best first came within 0.5 pt of the
best any tool found; then one line of ratios (peer / thaw).

With 300 validation images (--quick) one image is 0.33 pt and two seeds of the same trial differ by
1-4 pt, so one sweep per tool cannot say whether two bests are equal. `--repeats N` runs every tool
N times, repeat r with sampler and training seed 7 + r (`--first-seed` moves the 7; the tool order
rotated per repeat, so drift of the machine spreads over all). Per repeat it adds the time each tool
took to come within 0.5 pt of the repeat's common target: the lowest of the tools' bests, a value
every tool reached (time to a target, as optimizer benchmarks compare). The summary line gives, per
peer, the medians over repeats of the wall ratio and of the time-to-common-target ratio, and each
tool's mean best.

Every tool line lists its trials (`per_trial`: depth, lr, state, value, best value seen, epochs
reported). With the same sampler seed thaw and Optuna + plain Keras draw the same start-up trials;
the summary's `same_trials` compares them where both ran the same (depth, lr): the value gap where
both completed, and trials one pruned that the other completed (is a gap in the bests training or
pruning?).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, REPO, WEIGHTS, emit, need_shared  # noqa: E402

DEPTH_MAX, LR_MIN, LR_MAX, FINETUNE_FACTOR, SEED = 19, 1e-5, 1e-2, 0.1, 7


def setting(quick) -> dict:
    if quick == "smoke":  # checks that every tool runs (seconds, not a measurement)
        return dict(size=64, per_class=16, head=1, finetune=1, trials=2)
    if quick:
        return dict(size=96, per_class=150, head=3, finetune=3, trials=6)
    return dict(size=160, per_class=None, head=5, finetune=5, trials=8)


# ---------------------------------------------------------------- the peers (run in a child
# process)


def load_data(s):
    import numpy as np
    from omegaconf import OmegaConf

    from thaw import data
    from thaw.config.schema import DataConfig

    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig(name="folder")),
        dict(
            path=str(DATA), max_per_class=s["per_class"], test_fraction=0.5, max_memory_mb=1_000_000
        ),
    )  # the peers hold their data in memory
    ds = data.load(cfg, s["size"], SEED)

    def arrays(split):
        return np.asarray(split.images, np.float32), split.labels.astype("float32")

    return arrays(ds.train), arrays(ds.val)


def build(s, lr: float):
    """A plain Keras transfer-learning model, base frozen (what the Keras guide writes)."""
    import keras

    base = keras.applications.MobileNetV2(
        include_top=False, weights=str(WEIGHTS), alpha=0.35, input_shape=(s["size"], s["size"], 3)
    )
    base.trainable = False
    inp = keras.Input((s["size"], s["size"], 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inp, keras.layers.Dense(1)(x))
    compile_at(model, lr)
    return model, base


def compile_at(model, lr: float):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
    )


def unfreeze_top(base, depth: int):
    """The same blocks thaw's unfreeze.depth names (MobileNetV2: 19 blocks, top first)."""
    from thaw.model import unfreeze
    from thaw.model.backbones import get_spec

    unfreeze.apply(base, get_spec("mobilenet_v2"), "top_blocks", depth)


def two_phases(s, model, base, depth, lr, train, val, callbacks, first=0, last=None):
    """Head epochs [first, head), then fine-tune epochs [head, last); returns every val_accuracy."""
    last = s["head"] + s["finetune"] if last is None else last
    accs = []
    if first < s["head"]:
        h = model.fit(
            *train,
            validation_data=val,
            batch_size=32,
            epochs=min(s["head"], last),
            initial_epoch=first,
            callbacks=callbacks,
            verbose=0,
        )
        accs += h.history["val_accuracy"]
    if last > s["head"]:
        unfreeze_top(base, depth)
        compile_at(model, lr * FINETUNE_FACTOR)
        h = model.fit(
            *train,
            validation_data=val,
            batch_size=32,
            epochs=last,
            initial_epoch=max(first, s["head"]),
            callbacks=callbacks,
            verbose=0,
        )
        accs += h.history["val_accuracy"]
    return accs


def keras_tuner(s, kind: str, out: Path, seed: int):
    import keras
    import keras_tuner as kt

    train, val = load_data(s)
    done = []

    class TwoPhase(kt.HyperModel):
        def build(self, hp):
            hp.Int("depth", 0, DEPTH_MAX)
            model, self.base = build(s, hp.Float("lr", LR_MIN, LR_MAX, sampling="log"))
            return model

        def fit(self, hp, model, *args, epochs=None, initial_epoch=0, callbacks=(), **kwargs):
            accs = two_phases(
                s,
                model,
                self.base,
                hp.get("depth"),
                hp.get("lr"),
                train,
                val,
                list(callbacks),
                first=initial_epoch,
                last=epochs,
            )
            return {"val_accuracy": max(accs)}

    class Timed:
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            if (
                trial.status != "COMPLETED"
            ):  # Keras Tuner records a failed trial and goes on: say why
                print(
                    f"trial {trial.trial_id} {trial.status}: {trial.message}",
                    file=sys.stderr,
                    flush=True,
                )
            score = trial.score if trial.status == "COMPLETED" else None
            hp = trial.hyperparameters.values
            done.append(
                (
                    time.time(),
                    None if score is None else float(score),
                    dict(depth=hp.get("depth"), lr=hp.get("lr")),
                    "complete" if trial.status == "COMPLETED" else trial.status.lower(),
                    None if score is None else float(score),
                    None,
                )
            )
            keras.backend.clear_session()

    common = dict(
        objective=kt.Objective("val_accuracy", "max"),
        directory=str(out),
        project_name=kind,
        overwrite=True,
        seed=seed,
    )
    if kind == "kt_bayesian":
        tuner = type("T", (Timed, kt.BayesianOptimization), {})(
            TwoPhase(), max_trials=s["trials"], num_initial_points=3, **common
        )
        tuner.search(epochs=s["head"] + s["finetune"])
    else:
        tuner = type("T", (Timed, kt.Hyperband), {})(
            TwoPhase(),
            max_epochs=s["head"] + s["finetune"],
            factor=3,
            hyperband_iterations=1,
            **common,
        )
        tuner.search()
    return done


def optuna_keras(s, out: Path, seed: int):
    import keras
    import optuna
    from optuna_integration import KerasPruningCallback

    train, val = load_data(s)

    def objective(trial):
        depth, lr = (
            trial.suggest_int("depth", 0, DEPTH_MAX),
            trial.suggest_float("lr", LR_MIN, LR_MAX, log=True),
        )
        keras.backend.clear_session()
        model, base = build(s, lr)
        accs = two_phases(
            s, model, base, depth, lr, train, val, [KerasPruningCallback(trial, "val_accuracy")]
        )
        return max(accs)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        storage=f"sqlite:///{out / 'optuna.db'}",
        sampler=optuna.samplers.TPESampler(n_startup_trials=3, seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=s["head"]),
    )
    study.optimize(objective, n_trials=s["trials"])
    return trial_rows(study, "depth", "lr")


def trial_rows(study, depth_key: str, lr_key: str) -> list:
    """Per finished trial, in order: (finish time, value or None when pruned, params, state, the
    best validation accuracy it reported, epochs it reported): the same trials of two tools side by
    side."""
    rows = []
    for t in study.trials:
        if t.datetime_complete is None:
            continue
        steps = t.intermediate_values
        rows.append(
            (
                t.datetime_complete.timestamp(),
                t.value if t.state.name == "COMPLETE" else None,
                dict(depth=t.params.get(depth_key), lr=t.params.get(lr_key)),
                t.state.name.lower(),
                max(steps.values()) if steps else t.value,
                len(steps),
            )
        )
    return sorted(rows, key=lambda r: r[0])


def child(tool: str, quick: bool, out: Path, seed: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(seed)  # initial head weights, dropout, shuffling
    s = setting(quick)
    done = keras_tuner(s, tool, out, seed) if tool.startswith("kt_") else optuna_keras(s, out, seed)
    print("RESULT " + json.dumps(done), flush=True)


# ---------------------------------------------------------------- the parent: run each tool,
# compare


def run_thaw(s, out: Path, env, seed: int):
    import optuna

    cmd = [
        sys.executable,
        "-m",
        "thaw.commands.train",
        "--multirun",
        "experiment=cats_vs_dogs_local",
        "sweep=depth_lr",
        "logger=none",
        "trainer.save_model=false",
        "augment=none",
        f"data.path={DATA}",
        f"backbone.weights={WEIGHTS}",
        f"backbone.image_size={s['size']}",
        f"trainer.head_epochs={s['head']}",
        f"trainer.finetune_epochs={s['finetune']}",
        "trainer.patience=0",
        f"hydra.sweeper.n_trials={s['trials']}",
        f"hydra.sweeper.sampler.seed={seed}",
        f"trainer.seed={seed}",
        "hydra.sweeper.sampler.n_startup_trials=3",
        f"hydra.sweep.dir={out}",
        "hydra.sweeper.study_name=peers",
    ]
    if s["per_class"]:
        cmd.append(f"data.max_per_class={s['per_class']}")
    t0 = time.time()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode:
        raise SystemExit("thaw failed:\n" + res.stderr[-3000:])
    study = optuna.load_study(study_name="peers", storage=f"sqlite:///{out / 'study.db'}")
    return t0, wall, trial_rows(study, "unfreeze.depth", "lr.base")


def run_peer(tool: str, quick: bool, out: Path, env, seed: int):
    t0 = time.time()
    flag = ["--smoke"] if quick == "smoke" else ["--quick"] if quick else []
    res = subprocess.run(
        [sys.executable, __file__, "--child", tool, *flag, "--seed", str(seed), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.time() - t0
    line = next((l for l in res.stdout.splitlines() if l.startswith("RESULT ")), None)
    if res.returncode or line is None:
        raise SystemExit(f"{tool} failed:\n" + (res.stdout + res.stderr)[-3000:])
    return t0, wall, [tuple(x) for x in json.loads(line[7:])]


def time_to(t0: float, done, target: float):
    best = -math.inf
    for t, v, *_ in sorted(done, key=lambda x: x[0]):
        if v is not None:
            best = max(best, v)
        if best >= target:
            return round(t - t0, 1)
    return None


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--repeats", type=int, default=1, help="sweeps per tool, repeat r with seed first-seed + r"
    )
    ap.add_argument(
        "--first-seed", type=int, default=SEED, help="seed of the first repeat (default 7)"
    )
    ap.add_argument(
        "--tools", nargs="+", default=["thaw", "kt_bayesian", "kt_hyperband", "optuna_keras"]
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    quick = "smoke" if args.smoke else args.quick
    if args.child:
        return child(args.child, quick, Path(args.out), args.seed)
    need_shared()
    repeats = [one_repeat(args, quick, r) for r in range(args.repeats)]
    if args.repeats > 1 and "thaw" in args.tools:  # (--repeats 0 runs nothing)
        summarize(args, repeats)


def one_repeat(args, quick, r: int) -> dict:
    """Every tool once with seed first-seed + r; its JSON lines; returns the repeat's figures."""
    s, seed = setting(quick), args.first_seed + r
    tools = args.tools[r % len(args.tools) :] + args.tools[: r % len(args.tools)]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="thaw-peers-") as tmp:
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="3",
            WANDB_MODE="disabled",
            KERAS_HOME=str(Path(tmp) / "keras"),
        )
        for tool in tools:
            out = Path(tmp) / tool
            out.mkdir()
            runs[tool] = (
                run_thaw(s, out, env, seed)
                if tool == "thaw"
                else run_peer(tool, quick, out, env, seed)
            )
    runs = {tool: runs[tool] for tool in args.tools}
    bests = {
        tool: max((v for _, v, *_ in done if v is not None), default=None)
        for tool, (_, _, done) in runs.items()
    }
    best = max(v for v in bests.values() if v is not None)
    common = min(v for v in bests.values() if v is not None)  # a value every tool reached
    fig = {}
    for tool, (t0, wall, done) in runs.items():
        fig[tool] = dict(
            wall=wall, best=bests[tool], to_common=time_to(t0, done, common - 0.005), rows=done
        )
        emit(
            tool=tool,
            quick=args.quick,
            repeat=r,
            seed=seed,
            wall_s=round(wall, 1),
            best_value=bests[tool],
            trials=len(done),
            completed=sum(v is not None for _, v, *_ in done),
            time_to_within_half_point_s=time_to(t0, done, best - 0.005),
            time_to_common_target_s=fig[tool]["to_common"],
            setting=s,
            per_trial=[
                dict(
                    at_s=round(t - t0, 1), **params, state=state, value=v, best_seen=seen, epochs=n
                )
                for t, v, params, state, seen, n in done
            ],
        )
    if "thaw" in runs:
        t_wall, t_best = runs["thaw"][1], time_to(runs["thaw"][0], runs["thaw"][2], best - 0.005)
        t_common = fig["thaw"]["to_common"]
        emit(
            figure="ratios",
            quick=args.quick,
            repeat=r,
            seed=seed,
            overall_best=best,
            common_target=common,
            **{
                tool: dict(
                    wall=round(wall / t_wall, 2),
                    time_to_best=(
                        round(tb / t_best, 2)
                        if (tb := time_to(t0, done, best - 0.005)) and t_best
                        else None
                    ),
                    time_to_common_target=ratio(fig[tool]["to_common"], t_common),
                )
                for tool, (t0, wall, done) in runs.items()
                if tool != "thaw"
            },
        )
    return fig


def ratio(a, b):
    """a / b rounded, or None where either is missing (a tool with no completed trial in a
    repeat)."""
    return round(a / b, 2) if a is not None and b else None


def summarize(args, repeats):
    """Medians over repeats of each peer's ratios to thaw (repeats without a value left out, and
    counted), and every tool's mean best in points over the repeats where it completed a trial."""

    def med(xs):
        xs = [x for x in xs if x is not None]
        return round(statistics.median(xs), 2) if xs else None

    def points(t):
        return [round(100 * r[t]["best"], 2) if r[t]["best"] is not None else None for r in repeats]

    emit(
        figure="summary",
        quick=args.quick,
        repeats=len(repeats),
        mean_best={
            t: round(statistics.mean(p), 2)
            if (p := [x for x in points(t) if x is not None])
            else None
            for t in args.tools
        },
        best_per_repeat={t: points(t) for t in args.tools},
        **{
            t: dict(
                wall_median=med([ratio(r[t]["wall"], r["thaw"]["wall"]) for r in repeats]),
                time_to_common_target_median=med(
                    [ratio(r[t]["to_common"], r["thaw"]["to_common"]) for r in repeats]
                ),
                repeats_without_common_target=sum(
                    ratio(r[t]["to_common"], r["thaw"]["to_common"]) is None for r in repeats
                ),
            )
            for t in args.tools
            if t != "thaw"
        },
        same_trials={t: same_trials(repeats, t) for t in args.tools if t != "thaw"},
    )


def same_trials(repeats, peer: str) -> dict:
    """thaw and a peer on the very same (depth, lr) (same sampler seed: the start-up trials agree):
    how far apart their values are where both completed, and which trials one did not complete
    (pruned or failed) while the other did, with the completed value: is a gap in the bests training
    or pruning?"""

    def key(row):
        p = row[2]
        return None if p["depth"] is None or p["lr"] is None else (p["depth"], round(p["lr"], 12))

    diffs, not_here, not_there = [], [], []
    for r in repeats:
        theirs = {key(row): row for row in r[peer]["rows"] if key(row) is not None}
        for row in r["thaw"]["rows"]:
            other = theirs.get(key(row)) if key(row) is not None else None
            if other is None:
                continue
            if row[1] is not None and other[1] is not None:
                diffs.append(round(100 * (row[1] - other[1]), 2))
            elif row[1] is None and other[1] is not None:
                not_here.append(round(100 * other[1], 2))
            elif row[1] is not None and other[1] is None:
                not_there.append(round(100 * row[1], 2))
    return dict(
        both_completed=len(diffs),
        mean_thaw_minus_peer_pt=round(statistics.mean(diffs), 2) if diffs else None,
        diffs_pt=diffs,
        thaw_not_completed_peer_completed_pt=not_here,
        peer_not_completed_thaw_completed_pt=not_there,
    )


if __name__ == "__main__":
    main()
