"""Setting names: the keys the schema has, the ones a `+key=value` override added where it has
none (nothing reads them), and one line for a key that is no setting, naming the nearest."""

from __future__ import annotations

from omegaconf import DictConfig

from thaw.errors import ConfigError, unknown_setting


def added_keys(node, prefix: str = "") -> list[str]:
    """Keys a `+key=value` override put where the schema has none. (Looked up in the schema by
    path: a sweep's job config has lost its root's type.)"""
    known = schema_keys(prefix.rstrip("."))
    out = []
    for key in node:
        if key == "hydra":
            continue
        if known is not None and key not in known:
            out.append(f"{prefix}{key}")
        elif isinstance(node._get_node(key), DictConfig):
            out.extend(added_keys(node._get_node(key), f"{prefix}{key}."))
    return out


def schema_keys(parent: str) -> list[str] | None:
    """The settings the schema has under `parent` (dotted; "" for the top), None where it has no
    typed node."""
    import dataclasses
    import typing

    from thaw.config.schema import TrainConfig

    node_type = TrainConfig
    for part in parent.split(".") if parent else []:
        node_type = typing.get_type_hints(node_type).get(part)
        if not dataclasses.is_dataclass(node_type):
            return None
    return [f.name for f in dataclasses.fields(node_type)]


def not_a_setting(key: str) -> ConfigError:
    """One line for a key thaw-train has no setting for, with the nearest setting's name."""
    parent = key.rpartition(".")[0]
    where = f"in {parent}" if parent else "at the top level"
    return unknown_setting(key, schema_keys(parent) or [], where)
