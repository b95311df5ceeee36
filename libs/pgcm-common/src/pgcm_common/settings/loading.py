"""Loading a service's settings: the TOML file, the environment and flag overrides.

One TOML file can configure every service: each service reads its own table and the
shared tables it composes, and ignores the tables of the other services. Inside the
tables it reads, an unknown key is an error. Keys may be spelt with dashes
(``pause-timeout``) or with the original's flag names (``etcd-postgres-master-key``);
the original's flat format (top-level dashed keys) is read through
:mod:`pgcm_common.settings.original`.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import SettingsError

from pgcm_common.errors import ConfigError
from pgcm_common.settings import original
from pgcm_common.settings.fields import ENV_PREFIX, environ, leaves, merge, set_path
from pgcm_common.settings.model import (
    PgcmSettings,
    ignored_tables,
    original_keys_of,
    setting_table,
    shared_fields,
    toml_values,
)
from pgcm_common.settings.problems import InvalidSettings, problems_of

__all__ = ["LoadedConfigFile", "load_settings"]


@dataclass(frozen=True, slots=True)
class LoadedConfigFile:
    """The TOML file a settings model was loaded from.

    Attributes:
        path: where it was read.
        sha256: hex digest of its bytes (logged as ``hash=`` by ``config_file.loaded``).
        original_format: whether it has the original's flat keys (``etcd-endpoints``).
        ignored: the original's keys in it that pgcm ignores -> why.
    """

    path: Path
    sha256: str
    original_format: bool = False
    ignored: Mapping[str, str] = field(default_factory=dict)


def _normalise_table(
    table: Mapping[str, object],
    *,
    where: str,
    aliases: Mapping[str, str],
) -> dict[str, Any]:
    """Spell every key as its field path; dashes and the original's names are accepted."""
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in table.items():
        path = aliases.get(key, key.replace("-", "_"))
        if path in seen:
            raise ConfigError(
                f"{where}.{key}" if where else key, f"duplicates {seen[path]!r} (same setting)"
            )
        seen[path] = key
        set_path(out, path, value)
    return out


def _read_toml(cls: type[PgcmSettings], path: Path) -> tuple[dict[str, Any], LoadedConfigFile]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("config_file", f"cannot read {str(path)!r}: {exc.strerror}") from exc
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config_file", f"{str(path)!r} is not valid TOML: {exc}") from exc
    shared = shared_fields(cls)
    ignored = ignored_tables(cls)
    result: dict[str, Any] = {}
    flat: dict[str, object] = {}
    for key, value in doc.items():
        if key in ignored:
            continue  # another service's table: one file configures them all
        if original.is_original_key(key):
            flat[key] = value  # the original's flat format (a drop-in file)
            continue
        if key not in shared and key != cls.section:
            raise ConfigError(
                key,
                f"unknown top-level key in {str(path)!r}; expected tables "
                + ", ".join(f"[{t}]" for t in sorted(shared | {cls.section}))
                + " or the original's keys (see docs/configuration.md)",
            )
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table ([{key}]), not a value")
        if key == cls.section:
            merge(result, _normalise_table(value, where=key, aliases=original_keys_of(cls)))
        else:
            merge(result, {key: _normalise_table(value, where=key, aliases={})})
    digest = hashlib.sha256(data).hexdigest()
    if not flat:
        return result, LoadedConfigFile(path=path, sha256=digest)
    # Keys no model of this service claims are another service's: skipped, as tables are.
    from_original = original.read_original(flat, original_keys_of(cls))
    _merge_original(result, from_original, cls)
    loaded = LoadedConfigFile(
        path=path, sha256=digest, original_format=True, ignored=dict(from_original.ignored)
    )
    return result, loaded


def _merge_original(
    result: dict[str, Any], from_original: original.OriginalConfig, cls: type[PgcmSettings]
) -> None:
    """Add the settings of the original's flat keys; a pgcm table may not set them too."""
    for path, value in from_original.values.items():
        node: object = result
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            table, key = setting_table(cls, path)
            source = from_original.sources[path]
            raise ConfigError(source, f"sets the same setting as [{table}] {key}")
        set_path(result, path, value)


S = TypeVar("S", bound=PgcmSettings)


def load_settings(
    cls: type[S],
    *,
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> tuple[S, LoadedConfigFile | None]:
    """Build a service's settings from defaults, TOML, environment and flag overrides.

    Args:
        cls: the service's settings model.
        config_file: the ``--config-file`` path, if any.
        overrides: values from command-line flags (see :func:`flag_overrides`), nested
            by field path; they win over everything else.

    Returns:
        The frozen settings and, when a file was read, its path and hash.

    Raises:
        ConfigError: the file cannot be read or parsed, or a key is unknown; an
            :class:`InvalidSettings` when values fail validation (one line per key).
    """
    table: dict[str, Any] = {}
    loaded = None
    if config_file is not None:
        table, loaded = _read_toml(cls, config_file)
    try:
        with toml_values(table):
            kwargs: dict[str, Any] = dict(overrides or {})
            settings = cls(**kwargs)
    except ValidationError as exc:
        raise InvalidSettings(problems_of(exc, cls)) from exc
    except SettingsError as exc:
        # pydantic-settings decodes list/dict values from the environment as JSON and
        # raises its own error on bad JSON (PGCM_TOKENS=5s): still a bad setting.
        raise ConfigError(_settings_error_key(exc, cls), "not valid JSON") from exc
    return settings, loaded


_SETTINGS_ERROR_FIELD = re.compile(r'field "([^"]+)"')


def _settings_error_key(exc: SettingsError, cls: type[PgcmSettings]) -> str:
    """Return the environment variable a pydantic-settings error is about.

    pydantic-settings names only the top-level field (``etcd``) although the variable
    holding the bad JSON is a nested one (``PGCM_ETCD__ENDPOINTS``): find that variable
    by decoding the list and map variables of that field ourselves.
    """
    match = _SETTINGS_ERROR_FIELD.search(str(exc))
    if match is None:
        return "<environment>"
    field = match.group(1)
    if field not in cls.model_fields:
        return field
    env = {name.upper(): value for name, value in environ().items()}
    for leaf in leaves(cls):
        in_field = leaf.path == field or leaf.path.startswith(f"{field}.")
        if in_field and leaf.kind in {"list", "dict"} and leaf.env in env:
            try:
                json.loads(env[leaf.env])
            except ValueError:
                return leaf.env
    return ENV_PREFIX + field.upper()
