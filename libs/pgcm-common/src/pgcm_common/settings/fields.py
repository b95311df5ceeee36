"""Walking a settings model: every settable value (a "leaf") with its flag and env names.

The loader, the flags, the renderer and the error reports all see a settings model as
the same flat list of leaves: the service's own fields and the fields of its shared
tables, by dotted path (``pause_timeout``, ``etcd.endpoints``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from pgcm_common.errors import ConfigError
from pgcm_common.settings.values import format_duration

__all__ = [
    "ENV_PREFIX",
    "Leaf",
    "default_of",
    "environ",
    "is_secret",
    "is_secret_map",
    "kind_of",
    "leaves",
    "merge",
    "set_path",
    "show",
    "submodel",
    "unwrap_optional",
]

ENV_PREFIX = "PGCM_"


def environ() -> Mapping[str, str]:
    """Return the process environment (read here only, so tests see one source)."""
    import os  # noqa: PLC0415 - the only environment read in pgcm lives here

    return os.environ


@dataclass(frozen=True, slots=True)
class Leaf:
    """One settable value: a field of the service model or of a shared sub-model."""

    path: str  # "pause_timeout" or "etcd.endpoints"
    info: FieldInfo
    kind: str  # "bool" | "list" | "dict" | "scalar"

    @property
    def flag(self) -> str:
        """Return the command-line flag: ``--etcd-dial-timeout``."""
        return "--" + self.path.replace(".", "-").replace("_", "-")

    @property
    def dest(self) -> str:
        """Return the argparse destination, apart from every other option's."""
        return "pgcm_setting__" + self.path.replace(".", "__")

    @property
    def env(self) -> str:
        """Return the environment variable: ``PGCM_ETCD__DIAL_TIMEOUT``."""
        return ENV_PREFIX + self.path.replace(".", "__").upper()

    def from_text(self, values: Sequence[str]) -> object:
        """Turn command-line/env text into the shape pydantic expects."""
        if self.kind == "list":
            return [item.strip() for value in values for item in value.split(",") if item.strip()]
        if self.kind == "dict":
            mapping: dict[str, str] = {}
            for value in values:
                for item in value.split(","):
                    if not item.strip():
                        continue
                    key, sep, val = item.partition("=")
                    if not sep:
                        raise ConfigError(self.path, f"expected KEY=VALUE, got {item!r}")
                    mapping[key.strip()] = val.strip()
            return mapping
        return values[-1]


def unwrap_optional(annotation: object) -> object:
    """Return the type under ``X | None`` and ``Annotated[X, ...]`` (``NonEmptySecret``)."""
    origin = typing.get_origin(annotation)
    if origin in {typing.Union, types.UnionType}:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return unwrap_optional(args[0])
    if origin is Annotated:
        return unwrap_optional(typing.get_args(annotation)[0])
    return annotation


def kind_of(annotation: object) -> str:
    """Return how a value of this type is given as text: bool, list, dict or scalar."""
    inner = unwrap_optional(annotation)
    origin = typing.get_origin(inner)
    if inner is bool:
        return "bool"
    if origin in {list, tuple, frozenset, set, Sequence}:
        return "list"
    if origin in {dict, Mapping}:
        return "dict"
    return "scalar"


def submodel(info: FieldInfo) -> type[BaseModel] | None:
    """Return the model of a field that is a table of its own, else None."""
    inner = unwrap_optional(info.annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner
    return None


def leaves(cls: type[BaseModel], prefix: str = "") -> Iterator[Leaf]:
    """Yield every settable value of ``cls``, sub-models' fields by dotted path."""
    for name, info in cls.model_fields.items():
        sub = submodel(info)
        if sub is not None:
            yield from leaves(sub, f"{prefix}{name}.")
        else:
            yield Leaf(f"{prefix}{name}", info, kind_of(info.annotation))


def set_path(target: dict[str, Any], path: str, value: object) -> None:
    """Set ``value`` at the dotted ``path`` of nested dicts, creating them."""
    *parents, last = path.split(".")
    node = target
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def merge(target: dict[str, Any], source: Mapping[str, object]) -> None:
    """Merge nested ``source`` into ``target``; values of ``source`` win."""
    for key, value in source.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merge(current, value)
        else:
            target[key] = value


def default_of(info: FieldInfo) -> object:
    """Return a field's default (``PydanticUndefined`` when it has none)."""
    return info.get_default(call_default_factory=True, validated_data={})


def is_secret(info: FieldInfo) -> bool:
    """Return whether the field holds a secret, which is never shown."""
    return unwrap_optional(info.annotation) is SecretStr


def is_secret_map(info: FieldInfo) -> bool:
    """Return whether the field is a mapping whose values are secrets (named tokens)."""
    inner = unwrap_optional(info.annotation)
    if typing.get_origin(inner) not in {dict, Mapping}:
        return False
    args = typing.get_args(inner)
    key_and_value = 2  # dict[K, V]: the value type is the second argument
    return len(args) == key_and_value and unwrap_optional(args[1]) is SecretStr


def show(value: object) -> str:
    """Return a value as help and comments show it (durations Go-style)."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)
