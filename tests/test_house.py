"""The house rules, checked on every run: the packages' import directions, no package cycles, and
the parts that must never import TensorFlow (config, folder scanning, the sweeper)."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
TRAINING_SIDE = ("config", "data", "model", "train", "runtime")
# what the sweeper may import from thaw: it serves any Hydra app
SWEEPER_MAY_USE = {
    "thaw.errors",
    "thaw.runtime.outputs",
    "thaw.runtime.interrupt",
    "thaw.runtime.secrets",
}


def modules():
    """{dotted name: path} of every module under src/."""
    out = {}
    for path in SRC.rglob("*.py"):
        out[".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")] = path
    return out


def module_imports():
    """{module: {thaw module it imports, ...}}, function-level imports too; `from pkg import mod`
    counts as importing `pkg.mod`."""
    names, out = modules(), defaultdict(set)
    for module, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    out[module].add(sub if sub in names else node.module)
            elif isinstance(node, ast.Import):
                out[module] |= {a.name for a in node.names}
        out[module] = {m for m in out[module] if m.startswith("thaw")}
    return out


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_the_sweeper_imports_nothing_of_thaws_training_side():
    bad = {
        (m, i)
        for m, imports in module_imports().items()
        if m.startswith("thaw.sweeper") or m.startswith("hydra_plugins")
        for i in imports
        if package(i) != "thaw.sweeper" and i not in SWEEPER_MAY_USE
    }
    assert not bad, sorted(bad)


def test_the_training_side_imports_neither_the_sweeper_nor_the_commands_nor_the_report():
    bad = {
        (m, i)
        for m, imports in module_imports().items()
        if package(m).removeprefix("thaw.") in TRAINING_SIDE
        for i in imports
        if package(i) in ("thaw.sweeper", "thaw.commands", "thaw.report")
    }
    assert not bad, sorted(bad)


def test_no_package_imports_itself_through_another():
    edges = defaultdict(set)
    for m, imports in module_imports().items():
        for i in imports:
            if package(i) != package(m) and package(i) != "thaw":
                edges[package(m)].add(package(i))

    def cycle_from(start):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == start:
                    return path + [nxt]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, list(edges)) if c]
    assert not cycles, cycles


@pytest.mark.parametrize(
    "tool",
    [[sys.executable, "-m", "ruff", "check"], [sys.executable, "-m", "ruff", "format", "--check"]],
)
def test_ruff_is_clean(tool):
    repo = SRC.parent
    res = subprocess.run(
        [*tool, "src", "tests", "benchmarks"], cwd=repo, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_config_checks_folder_scanning_and_the_sweeper_never_import_tensorflow(tmp_path):
    from imagefiles import make_folder

    folder = make_folder(tmp_path / "photos", per_class=3)
    script = f"""
import sys, pkgutil, importlib
import thaw.sweeper, thaw.config
for pkg in (thaw.sweeper, thaw.config):
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "keras_pruning":  # a Keras callback: Keras is the point of it
            importlib.import_module(pkg.__name__ + "." + info.name)
import hydra_plugins.thaw_sweeper.thaw_sweeper, thaw.commands.sweep_hooks
from hydra import compose, initialize_config_dir
from thaw.config.paths import conf_dir
from thaw.config.schema import register_configs
from thaw.config.checks import validate
register_configs()
from thaw.data.scan import scan_folder
with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
    cfg = compose("train", overrides=["data=folder", "data.path={folder}", "logger=none"])
validate(cfg)
print(len(scan_folder(cfg.data).train.files))
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    count, loaded = res.stdout.strip().splitlines()[-2:]
    assert int(count) > 0 and loaded == "[]", res.stdout


# What a module may hold at module level besides constants: a lock, the flag a signal handler
# sets (signals belong to the process), a context variable (the sweeper's current trial), a logger.
ALLOWED_MODULE_CALLS = {
    "logging.getLogger",
    "threading.Lock",
    "threading.Event",
    "contextvars.ContextVar",
    "ContextVar",
    "Path",
    "frozenset",
    "tuple",
    "TypeVar",
    "re.compile",
    "_choices",  # thaw.config.schema: a StrEnum type of a closed set of config values (immutable)
}
MUTATORS = {
    "append",
    "extend",
    "update",
    "clear",
    "pop",
    "popitem",
    "setdefault",
    "add",
    "discard",
    "remove",
    "insert",
    "move_to_end",
}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _module_state(path: Path) -> list[str]:
    """Module-level names this module mutates (item assignment, a mutating method, `global`),
    and module-level objects built by calls other than the allowed ones."""
    tree = ast.parse(path.read_text())
    names, found = set(), []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Name):
                names.add(t.id)
                value = node.value
                if isinstance(value, ast.Call) and _dotted(value.func) not in ALLOWED_MODULE_CALLS:
                    found.append(f"{t.id} = {_dotted(value.func)}(...)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found += [f"global {n}" for n in node.names]
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            for t in node.targets if not isinstance(node, ast.AugAssign) else [node.target]:
                if isinstance(t, ast.Subscript) and _dotted(t.value) in names:
                    found.append(f"{_dotted(t.value)}[...] changed")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in MUTATORS and _dotted(node.func.value) in names:
                found.append(f"{_dotted(node.func.value)}.{node.func.attr}(...)")
    return found


def test_no_module_keeps_state_between_runs_outside_the_workspace():
    """What a process keeps between runs lives in one object, thaw.train.workspace.Workspace,
    passed down explicitly; modules hold constants only."""
    bad = {name: found for name, path in modules().items() if (found := _module_state(path))}
    assert not bad, bad
