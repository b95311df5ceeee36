"""Settings rendered as commented TOML (``show-config``), secrets never shown."""

from __future__ import annotations

import re
from collections.abc import Mapping

import tomli_w
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pgcm_common.settings.fields import (
    Leaf,
    default_of,
    is_secret,
    is_secret_map,
    kind_of,
    show,
    submodel,
)
from pgcm_common.settings.model import PgcmSettings, shared_fields

__all__ = ["REDACTED", "render_toml"]

REDACTED = "<redacted>"


def _toml_value(value: object) -> str:
    line = tomli_w.dumps({"v": value})
    return line.split("=", 1)[1].strip()


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def render_toml(settings: PgcmSettings, *, header: str | None = None) -> str:
    """Render settings as commented TOML that :func:`load_settings` reads back.

    Every key carries its description, default and environment variable as comments.
    Secrets are never printed: a set secret becomes a commented-out ``<redacted>`` line,
    and a table of secrets (named tokens) is commented out whole, names kept.
    Unset optional values are commented out too (TOML has no null).
    """
    cls = type(settings)
    data = settings.model_dump(mode="json")
    lines: list[str] = _comment(header) if header else []
    shared = shared_fields(cls)
    service_fields = {n: i for n, i in cls.model_fields.items() if n not in shared}
    lines += ["", f"[{cls.section}]"]
    lines += _render_fields(service_fields, data, obj=settings, prefix="", table=cls.section)
    for name in sorted(shared):
        sub = submodel(cls.model_fields[name])
        if sub is None:  # pragma: no cover - _shared_fields only returns sub-models
            continue
        lines += ["", f"[{name}]"]
        lines += _render_fields(
            sub.model_fields, data[name], obj=getattr(settings, name), prefix=f"{name}.", table=name
        )
    return "\n".join(lines).lstrip("\n") + "\n"


def _render_fields(
    fields: Mapping[str, FieldInfo],
    data: Mapping[str, object],
    *,
    obj: object,
    prefix: str,
    table: str,
) -> list[str]:
    lines: list[str] = []
    tables: list[str] = []
    for name, info in fields.items():
        leaf = Leaf(prefix + name, info, kind_of(info.annotation))
        out = tables if leaf.kind == "dict" else lines
        out.append("")
        out += _comment(info.description or name)
        default = default_of(info)
        meta = f"env: {leaf.env}"
        if default is not PydanticUndefined and not is_secret(info):
            meta = f"default: {show(default)}; {meta}"
        out += _comment(meta)
        value = data.get(name)
        if is_secret(info):
            secret = getattr(obj, name)
            shown = REDACTED if secret is not None and secret.get_secret_value() else "(unset)"
            out.append(f"# {name} = {shown}")
        elif value is None:
            out.append(f"# {name} = (unset)")
        elif is_secret_map(info):
            # The whole table is commented out: an uncommented key = "<redacted>" (or
            # pydantic's "**********") would load back as a real, guessable secret.
            secrets: Mapping[str, SecretStr] = getattr(obj, name)
            out.append(f"# [{table}.{name}]")
            out += [f"# {_toml_key(k)} = {REDACTED}" for k in secrets]
        elif leaf.kind == "dict" and isinstance(value, dict):
            out.append(f"[{table}.{name}]")
            out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        else:
            out.append(f"{name} = {_toml_value(value)}")
    return lines + tables


def _toml_key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    return _toml_value(key)
