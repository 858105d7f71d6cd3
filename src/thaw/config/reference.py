"""The configuration reference, generated: every key of the structured configs (thaw-train's
schema and the sweeper's) with its type, default and one-line doc, and every option of the config
groups in conf/, as markdown. The docs site builds its reference page from `markdown()`, so the
page cannot drift from the code. Never imports TensorFlow.

    python -m thaw.config.reference > reference.md
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from thaw.config import schema
from thaw.config.paths import conf_dir, experiments_dir

# One-line docs for keys whose source carries no comment (neither in the dataclass nor in the
# group's default option); a key without a doc fails tests/test_docs.py.
DOCS = {
    "name": "the run's name: output paths, W&B names, the sweep preset's study name",
    "backbone.name": "the keras.applications architecture (the `backbone` group's option)",
    "backbone.alpha": "width multiplier (MobileNet); ImageNet weights exist for some values only",
    "backbone.image_size": "input side in pixels; images are resized to it once, when decoded",
    "head.name": "the head's form (the `head` group's option): `linear` or `mlp`",
    "head.dropout": "dropout rate before the output layer",
    "head.activation": "activation of the hidden layer (mlp)",
    "lr.name": "the schedule (the `lr` group's option): `constant` or `cosine`",
    "lr.base": "learning rate of the head phase",
    "lr.finetune_factor": "the fine-tuning phase runs at lr.base x this",
    "unfreeze.name": "the unfreeze rule (the `unfreeze` group's option): `top_blocks`, `none`, "
    "`all`",
    "unfreeze.depth": "how many top blocks of the backbone train in phase 2 (0: the head only)",
    "data.name": "the data source (the `data` group's option): `synthetic`, `folder`, "
    "`cats_vs_dogs`",
    "data.path": "the image folder (`data=folder`): class sub-folders, or train/ + "
    "validation/ (or val/, valid/)",
    "data.batch_size": "images per training step",
    "data.augment": "deprecated: true augments with a flip and rotation 0.1; use the `augment` "
    "group",
    "data.num_train": "synthetic: training images",
    "data.num_val": "synthetic: validation images",
    "data.num_test": "synthetic: test images (evaluated once at the end)",
    "data.tfds_name": "TensorFlow Datasets name (`data=cats_vs_dogs`)",
    "data.tfds_data_dir": "TensorFlow Datasets directory (null: its default)",
    "data.tfds_train_split": "TensorFlow Datasets split string for training",
    "data.tfds_val_split": "TensorFlow Datasets split string for validation",
    "data.tfds_test_split": "TensorFlow Datasets test split, loaded when data.test_fraction > 0",
    "augment.name": "the augmentation preset (the `augment` group's option)",
    "trainer.head_epochs": "epochs of phase 1 (the head on the frozen base)",
    "trainer.finetune_epochs": "epochs of phase 2 (the top blocks and the head)",
    "trainer.seed": "seed of the head's initialisation, the data order and the view schedule",
    "trainer.objective": "what a run reports and a sweep optimises; a list for several objectives",
    "trainer.optimizer": "the optimizer: adam, adamw, sgd, ...",
    "trainer.deterministic": "deterministic TensorFlow ops (tf.config.experimental."
    "enable_op_determinism)",
    "trainer.save_model": "write model.keras at the end of the run",
    "logger.name": "the tracker (the `logger` group's option): `wandb` or `none`",
    "logger.project": "W&B project",
    "logger.entity": "W&B entity (null: the account's default)",
    "logger.tags": "W&B tags of every run",
    "logger.init_timeout": "seconds an online W&B start may take before it falls back to offline",
    "hydra.sweeper.sampler": "the Optuna sampler node (`hydra/sweeper/sampler=NAME`); unset: TPE",
    "hydra.sweeper.pruner": "the Optuna pruner node (`hydra/sweeper/pruner=NAME`); unset: none",
    "hydra.sweeper.study_name": "the study's name (the sweep presets derive it from the config)",
    "hydra.sweeper.grace_period": "seconds without a heartbeat after which a trial is stale",
    "hydra.sweeper.params": "the search space: key -> Hydra sweep expression (interval, choice...)",
    "hydra.sweeper.failure_min_trials": "finished trials before the failure rule is judged",
    "hydra.sweeper.confirm.seeds": "more seeds each confirmed trial and the baseline run with",
    "hydra.sweeper.confirm.seed_key": "the config key confirmation runs vary",
}

# Hydra's plumbing in the sweeper's node, not settings a user gives.
SWEEPER_PLUMBING = ("_target_", "_recursive_", "defaults")


@dataclass
class Row:
    key: str
    type: str
    default: Any
    doc: str


def _comments(path: Path) -> dict[int, str]:
    """Comment text by line number."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _one_line(parts: list[str]) -> str:
    text = " ".join(p for p in parts if p)
    return re.sub(r"\s+", " ", text).strip()


def field_docs(cls: type) -> dict[str, str]:
    """Each field's comment in the class's source: the comment lines right above it and any on its
    own lines, joined into one line."""
    path = Path(__import__(cls.__module__, fromlist=["_"]).__file__)
    source = path.read_text()
    comments = _comments(path)
    code_lines = source.splitlines()
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, line = [], stmt.lineno - 1
        while line >= 1 and code_lines[line - 1].strip().startswith("#"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        if len(above) == 1 and re.fullmatch(r"[\w& ]{1,30}", above[0]):
            above = []  # a section label (`# synthetic`) over several fields, not this one's doc
        own = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
        docs[stmt.target.id] = _one_line(above + own)
    return docs


def _fields(cls: type, prefix: str, skip=()) -> list[tuple[str, dataclasses.Field, type]]:
    """(dotted key, field, owning class) for every leaf field, nested dataclasses walked."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out += _fields(type(default), f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f, cls))
    return out


def _type(f: dataclasses.Field) -> str:
    """The annotation as written (`int | None`), whether or not the module postpones it; a
    closed set of values (an Enum field) as its choices (`auto | never`)."""
    if isinstance(f.default, enum.Enum):
        return " | ".join(m.value for m in type(f.default))
    t = f.type
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default.value if isinstance(f.default, enum.Enum) else f.default


def _yaml_comments(path: Path) -> dict[str, str]:
    """Inline comments of a group option's top-level keys (`key: value  # doc`)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(\w+):[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _group_default_comments() -> dict[str, str]:
    """The inline comments of the default option of each group conf/train.yaml composes."""
    train = yaml.safe_load((conf_dir() / "train.yaml").read_text())
    out = {}
    for entry in train.get("defaults", []):
        if isinstance(entry, dict):
            ((group, option),) = entry.items()
            path = conf_dir() / group / f"{option}.yaml"
            if option and path.is_file():
                for key, doc in _yaml_comments(path).items():
                    out[f"{group}.{key}"] = doc
    return out


def _doc(owner: type, name: str) -> str:
    """The field's comment in the class that declares it (a subclass may inherit it)."""
    for cls in owner.__mro__:
        if dataclasses.is_dataclass(cls) and name in getattr(cls, "__annotations__", {}):
            return field_docs(cls).get(name, "")
    return ""


def composed_defaults() -> dict[str, Any]:
    """thaw-train's config with no overrides (conf/train.yaml and the default option of each
    group), interpolations kept as written: a key's default is what a run gets, which a group
    option may set over the schema's (`logger.name` is the schema's `none`, `wandb` in a run)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(schema.compose_train(), resolve=False, enum_to_str=True)


def train_rows() -> list[Row]:
    """Every key of thaw-train's schema (thaw.config.schema.TrainConfig), with its default in a
    run."""
    from_yaml, in_a_run = _group_default_comments(), dict(_flat(composed_defaults()))
    rows = []
    for key, f, owner in _fields(schema.TrainConfig, ""):
        doc = _doc(owner, f.name) or from_yaml.get(key) or DOCS.get(key, "")
        default = in_a_run.get(key, "???")  # the schema's where composition leaves it unset
        rows.append(Row(key, _type(f), _default(f) if default == "???" else default, doc))
    return rows


def sweeper_rows() -> list[Row]:
    """Every key of the sweeper's node (hydra.sweeper, `hydra/sweeper=thaw`)."""
    from hydra_plugins.thaw_sweeper.thaw_sweeper import ThawSweeperConf

    rows = []
    for key, f, owner in _fields(ThawSweeperConf, "hydra.sweeper.", skip=SWEEPER_PLUMBING):
        doc = _doc(owner, f.name) or DOCS.get(key, "")
        rows.append(Row(key, _type(f), _default(f), doc))
    return rows


def _value(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, width=1000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return f"`{text}`" if text else "`''`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[Row]) -> list[str]:
    out = ["| key | type | default | doc |", "|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| `{r.key}` | `{_cell(r.type)}` | {_cell(_value(r.default))} | {_cell(r.doc)} |"
        )
    return out


def _first_comment(path: Path) -> str:
    """The first sentence of a YAML file's leading comment (after `# @package`)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text or text.startswith(("thaw-train ", "pip ")):
            break
        lines.append(text)
    text = _one_line(lines)
    m = re.match(r"(.+?\.)(\s|$)", text)
    return (m.group(1) if m else text).rstrip(":;")


def _flat(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        out = []
        for k, v in node.items():
            if k == "defaults":
                continue
            out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [(f"{prefix}{k}", v)]
        return out
    return [(prefix.rstrip("."), node)]


def group_rows() -> list[tuple[str, str, str, str]]:
    """(group, option, what it is, the keys it sets) for every YAML option under conf/ and every
    experiment preset."""
    rows = []
    files = sorted(p for p in conf_dir().rglob("*.yaml") if p.parent != conf_dir())
    for path in files:
        group = path.parent.relative_to(conf_dir()).as_posix()
        rows.append((group, path.stem, _first_comment(path), path))
    for path in sorted(experiments_dir().glob("*.yaml")):
        rows.append(("experiment", path.stem, _first_comment(path), path))
    out = []
    for group, option, doc, path in rows:
        body = yaml.safe_load(path.read_text()) or {}
        sets = ", ".join(f"`{k}={_value(v).strip('`')}`" for k, v in _flat(body))
        out.append((group, option, doc, sets))
    return out


def optuna_group_rows() -> list[tuple[str, str, str]]:
    """(group, option, Optuna class) for the sampler and pruner options the plugin registers."""
    from hydra_plugins.thaw_sweeper import groups

    tables = {"hydra/sweeper/sampler": groups.SAMPLERS, "hydra/sweeper/pruner": groups.PRUNERS}
    return [(group, name, node._target_) for group, t in tables.items() for name, node in t.items()]


def markdown() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `thaw.config.schema` (thaw-train's keys), the sweeper's node "
        "(`hydra_plugins.thaw_sweeper`) and the YAML files in `conf/` and `experiments/` by "
        "`thaw.config.reference`, each time the site is built. A default is what `thaw-train` gets "
        "with no overrides (`conf/train.yaml` and the default option of each group); another group "
        "option sets the keys listed under *Config groups*. Every key is a command-line override: "
        "`thaw-train trainer.seed=7`.",
        "",
        "## thaw-train",
        "",
        *_table(train_rows()),
        "",
        "## The sweeper: `hydra.sweeper`",
        "",
        "With `hydra/sweeper=thaw` (every `sweep=` preset selects it). Give them as "
        "`hydra.sweeper.n_trials=40`.",
        "",
        *_table(sweeper_rows()),
        "",
        "## Config groups",
        "",
        "`conf/train.yaml` composes one option of each group; `experiment` presets live in "
        "`experiments/`. Select one with `GROUP=OPTION` (`backbone=resnet50`, "
        "`hydra/launcher=slurm`).",
        "",
        "| group | option | what | sets |",
        "|---|---|---|---|",
    ]
    for group, option, doc, sets in group_rows():
        out.append(f"| `{group}` | `{option}` | {_cell(doc)} | {_cell(sets)} |")
    out += [
        "",
        "## Samplers and pruners",
        "",
        "Typed options registered by the sweeper plugin; their arguments are the Optuna class's, "
        "with Optuna's defaults (`hydra.sweeper.pruner.patience=2`).",
        "",
        "| group | option | Optuna class |",
        "|---|---|---|",
    ]
    for group, name, target in optuna_group_rows():
        out.append(f"| `{group}` | `{name}` | `{target}` |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
