"""Sampler and pruner config groups: every swap command of docs/how-to/samplers-and-pruners.md
composes and builds its Optuna objects through the sweeper's own code, and selecting a group
replaces the whole node."""

import re
import shlex
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import compose_cfg
from omegaconf import OmegaConf

from thaw.commands.train import _fixed_overrides
from thaw.sweeper import plan as plan_mod
from thaw.sweeper.pruners import StepMedianPruner
from thaw.sweeper.study_setup import build_pruner, instantiate, sampler_node

SWAP_PAGE = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "samplers-and-pruners.md"


def readme_swap_commands():
    text = SWAP_PAGE.read_text()
    block = re.search(r"<!-- swap-commands.*?```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def build(argv):
    """(sampler, pruner, n_trials) exactly as `thaw-train --multirun <argv>` would build them."""
    assert argv[:2] == ["thaw-train", "--multirun"]
    overrides = argv[2:]
    cfg = compose_cfg(_fixed_overrides(overrides), hydra_config=True)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    plan = plan_mod.build(
        sweeper, cfg, [o for o in overrides if o not in _fixed_overrides(overrides)]
    )
    node, n_trials = sampler_node(sweeper, plan, int(sweeper["n_trials"]))
    return (
        instantiate(sweeper, "sampler", None, node),
        build_pruner(sweeper),
        n_trials,
    )


@pytest.mark.parametrize("argv", readme_swap_commands(), ids=lambda a: " ".join(a[4:])[:60])
def test_readme_swap_command_builds_what_it_says(argv):
    check_swap_command(argv)


def check_swap_command(argv):
    """Build the line's objects and check them against the line; returns the arguments it
    checked."""
    sampler, pruner, n_trials = build(argv)
    text = " ".join(argv)
    want_sampler = re.search(r"hydra/sweeper/sampler=(\w+)", text)
    want = {
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "grid": optuna.samplers.GridSampler,
    }
    assert isinstance(
        sampler, want[want_sampler.group(1)] if want_sampler else optuna.samplers.TPESampler
    )
    want_pruner = re.search(r"hydra/sweeper/pruner=(\w+)|_target_: optuna\.pruners\.(\w+)", text)
    classes = {
        "hyperband": optuna.pruners.HyperbandPruner,
        "median": optuna.pruners.MedianPruner,
        "threshold": optuna.pruners.ThresholdPruner,
        "ThresholdPruner": optuna.pruners.ThresholdPruner,
        "patient": optuna.pruners.PatientPruner,
        "none": optuna.pruners.NopPruner,
    }
    name = (want_pruner.group(1) or want_pruner.group(2)) if want_pruner else None
    assert isinstance(pruner, classes[name] if name else StepMedianPruner)
    if "sampler=grid" in text:  # 7 depths x 2 learning rates
        assert n_trials == 14
    # and every argument the line gives reached the Optuna object: as a dotted key
    # (hydra.sweeper.pruner.lower=0.6) or inside a whole node ('hydra.sweeper.pruner={_target_: ...,
    # lower: 0.6}')
    given = re.findall(r"hydra\.sweeper\.(sampler|pruner)\.(\w+)=(\S+)", text)
    for node, body in re.findall(r"hydra\.sweeper\.(sampler|pruner)=(\{.*?\})", text):
        given += [
            (node, key, value) for key, value in yaml.safe_load(body).items() if key != "_target_"
        ]
    for node, key, value in given:
        obj = sampler if node == "sampler" else pruner
        got = getattr(obj, f"_{key}", getattr(obj, key, None))
        assert got is not None and float(got) == float(value), (node, key, got, value)
    return given


def test_readme_swap_commands_check_every_argument_they_give():
    """The check above reads both forms; a swap line that gives an argument is checked on it."""
    lines = {" ".join(argv): argv for argv in readme_swap_commands()}
    node_form = [argv for text, argv in lines.items() if "hydra.sweeper.pruner={" in text]
    assert node_form, "the swap page's ThresholdPruner node line is gone"
    for argv in node_form:
        assert "lower" in [key for node, key, _ in check_swap_command(argv) if node == "pruner"], (
            argv
        )


def test_selecting_a_group_replaces_the_whole_node():
    # the preset's pruner has StepMedianPruner arguments; hyperband gets none of them
    sampler, pruner, _ = build(
        [
            "thaw-train",
            "--multirun",
            "experiment=tiny",
            "sweep=depth_lr",
            "hydra/sweeper/pruner=hyperband",
            "hydra/sweeper/sampler=random",
        ]
    )
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and isinstance(
        sampler, optuna.samplers.RandomSampler
    )
    # the preset's own choices: TPE with 5 start-up trials, seeded; the median from the first
    # fine-tuning epoch
    sampler, pruner, _ = build(
        ["thaw-train", "--multirun", "experiment=tiny", "sweep=depth_lr", "trainer.head_epochs=4"]
    )
    assert sampler._n_startup_trials == 5
    assert (
        isinstance(pruner, StepMedianPruner)
        and pruner.n_warmup_steps == 4
        and pruner.n_startup_trials == 3
    )


@pytest.mark.parametrize(
    "target, kind",
    [
        ("optuna.pruners.MedianPruner", optuna.pruners.MedianPruner),
        ("optuna.pruners.PercentilePruner", optuna.pruners.PercentilePruner),
    ],
)
def test_the_older_form_swaps_the_presets_pruner(target, kind, caplog):
    """`hydra.sweeper.pruner._target_=...` keeps the preset's other keys: the ones only
    StepMedianPruner takes are left out, with a warning naming them; the rest still apply."""
    extra = ["+hydra.sweeper.pruner.percentile=25"] if "Percentile" in target else []
    argv = ["thaw-train", "--multirun", "experiment=tiny", "sweep=depth_lr"]
    with caplog.at_level("WARNING", logger="thaw.sweeper"):
        _, pruner, _ = build([*argv, f"hydra.sweeper.pruner._target_={target}", *extra])
    assert type(pruner) is kind
    assert pruner._n_startup_trials == 3  # the preset's, kept
    assert "takes no best_since_warmup, include_pruned, tolerance_se" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="thaw.sweeper"):
        _, pruner, _ = build(argv)  # the preset itself: nothing left out, nothing said
    assert type(pruner) is StepMedianPruner and pruner.tolerance_se == 2.0
    assert "takes no" not in caplog.text


@pytest.mark.parametrize(
    "node, why",
    [
        (
            "{_target_: optuna.pruners.ThresholdPruner, lowr: 0.6}",
            "(TypeError: ThresholdPruner.__init__() got an unexpected keyword argument 'lowr')",
        ),
        ("{_target_: optuna.pruners.ThresholdPruner}", "Either lower or upper must be specified"),
        ("{_target_: optuna.pruners.NoSuchPruner}", "(no such class or function)"),
    ],
)
def test_a_pruner_that_cannot_be_built_says_why(node, why):
    from thaw.errors import ConfigError

    argv = ["thaw-train", "--multirun", "experiment=tiny", "sweep=depth_lr"]
    with pytest.raises(ConfigError, match="^hydra.sweeper.pruner: cannot build ") as err:
        build([*argv, "~hydra/sweeper/pruner", f"hydra.sweeper.pruner={node}"])
    assert why in str(err.value) and "\n" not in str(err.value)


def test_a_job_builds_the_swapped_pruner_as_its_sweeper_did(tmp_path):
    """The job side re-attaches to its trial with the pruner node of its own Hydra config, the
    preset's StepMedianPruner keys still in it: it leaves them out as the sweeper did."""
    from thaw.sweeper.trial import TrialHandle

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    trial = study.ask()
    cfg = compose_cfg(
        [
            "experiment=tiny",
            "sweep=depth_lr",
            "hydra.sweeper.pruner._target_=optuna.pruners.MedianPruner",
        ],
        hydra_config=True,
    )
    handle = TrialHandle(url, "s", trial.number, cfg.hydra.sweeper.pruner, None, None)
    assert type(handle.study.pruner) is optuna.pruners.MedianPruner
    assert handle.study.pruner._n_startup_trials == 3
