"""Settings primitives shared by every pgcm service.

Each service defines one frozen settings model (a :class:`PgcmSettings` subclass) and
loads it once in ``cli.py`` with :func:`load_settings`. Values come from, in rising order
of precedence (the same as the original's viper setup):

1. the defaults in the model;
2. a TOML file given with ``--config-file``;
3. the environment: ``PGCM_<FIELD>`` and ``PGCM_<TABLE>__<FIELD>`` for shared tables
   (the original's names, such as ``PGCM_ETCD_NAMESPACE``, are read too, below the new
   names);
4. command-line flags, generated from the model by :func:`add_settings_arguments`.

One TOML file can configure every service: each service reads its own table
(``[proxy]``, ``[supervise]``, ``[failover]``) and the shared tables (``[cluster]``,
``[etcd]``, ``[pgbouncer]``), and ignores the tables of the other services. Inside the tables it
reads, an unknown key is an error. Keys may be spelt with dashes (``pause-timeout``) or
with the original's flag names (``etcd-postgres-master-key``).

Durations use the :data:`Duration` type, which reads Go-style strings (``"5s"``,
``"500ms"``, ``"1m30s"``) and plain numbers of seconds, and writes Go-style strings back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, final

import structlog
import tomli_w
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from pgcm_common import original_config
from pgcm_common.errors import ConfigError
from pgcm_common.records import KeyLayout

__all__ = [
    "ENV_PREFIX",
    "MIN_LEASE_TTL",
    "REDACTED",
    "SERVICE_TABLES",
    "SHARED_TABLES",
    "ClusterSettings",
    "Duration",
    "InvalidSettings",
    "LeaseTTL",
    "LoadedConfigFile",
    "NonEmptySecret",
    "PgcmSettings",
    "PositiveDuration",
    "add_settings_arguments",
    "common_arguments",
    "flag_overrides",
    "format_duration",
    "load_settings",
    "original_keys_of",
    "parse_duration",
    "render_toml",
    "settings_from_args",
]

ENV_PREFIX = "PGCM_"
SHARED_TABLES = frozenset({"cluster", "etcd", "pgbouncer"})
SERVICE_TABLES = frozenset({"proxy", "supervise", "failover"})
REDACTED = "<redacted>"

_log = structlog.get_logger("pgcm.settings")

# --------------------------------------------------------------------------- durations

# Go's time.ParseDuration units, in nanoseconds. "µ" (U+00B5) and "μ" (U+03BC) both
# occur in the wild because Go accepts both.
_UNIT_NS: Mapping[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_COMPONENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration (``"1m30s"``, ``"500ms"``) or a number of seconds.

    Precision is one microsecond (what :class:`~datetime.timedelta` holds); finer values
    are rounded to the nearest microsecond.

    Raises:
        ValueError: the text is not a non-negative duration.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty duration")
    if raw.startswith("-"):
        raise ValueError(f"duration {text!r} must not be negative")
    body = raw.removeprefix("+")
    if _NUMBER.fullmatch(body):
        # A bare number is seconds: what an operator means by `pause_timeout = 5`.
        return _from_nanoseconds(Decimal(body) * _UNIT_NS["s"])
    pos = 0
    total = Decimal(0)
    for match in _COMPONENT.finditer(body):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(body):
        raise ValueError(
            f"invalid duration {text!r}: use a number of seconds or Go units "
            "such as '5s', '500ms', '1m30s' (units: ns, us, ms, s, m, h)"
        )
    return _from_nanoseconds(total)


def _from_nanoseconds(nanoseconds: Decimal) -> timedelta:
    try:
        micro = int((nanoseconds / 1000).to_integral_value())
        return timedelta(microseconds=micro)
    except (OverflowError, InvalidOperation) as exc:
        raise ValueError("duration out of range") from exc


_MICROS_PER_MS = 1_000
_MICROS_PER_S = 1_000_000


def format_duration(value: timedelta) -> str:
    """Write a duration the way Go would accept it, in its shortest exact form.

    ``timedelta(seconds=90)`` gives ``"1m30s"``, ``timedelta(milliseconds=500)`` gives
    ``"500ms"``; zero is ``"0s"``. Negative values get a leading ``-``.
    """
    micro = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if micro == 0:
        return "0s"
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    if micro < _MICROS_PER_MS:
        return f"{sign}{micro}us"
    if micro < _MICROS_PER_S:
        return f"{sign}{_decimal(micro, 1_000)}ms"
    hours, rest = divmod(micro, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if rest:
        parts.append(f"{_decimal(rest, 1_000_000)}s")
    return sign + "".join(parts)


def _decimal(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def _validate_duration(value: object) -> object:
    if isinstance(value, bool):
        raise TypeError("a duration must be a string like '5s' or a number of seconds")
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError("a duration must not be negative")
        return value
    if isinstance(value, int | float):
        return parse_duration(repr(value)) if value >= 0 else parse_duration(str(value))
    if isinstance(value, str):
        return parse_duration(value)
    return value  # let pydantic report the type error


Duration = Annotated[
    timedelta,
    BeforeValidator(_validate_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A non-negative :class:`~datetime.timedelta` read from ``"5s"``/``"500ms"``/seconds."""


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be positive")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A :data:`Duration` above zero: intervals, timeouts and bounds that 0 would disable."""

MIN_LEASE_TTL = timedelta(seconds=2)
"""The shortest etcd lease TTL pgcm accepts: what etcd itself grants at the least.

etcd raises every lease it grants to at least 1.5 election timeouts, rounded up to
whole seconds (its election timeout is 1 s by default: 2 s). A shorter TTL here would
not be the TTL etcd applies, and keepalives sent every third of it would race the
expiry on a loaded host.
"""


def _lease_ttl(value: timedelta) -> timedelta:
    if value < MIN_LEASE_TTL:
        raise ValueError(
            f"must be at least {format_duration(MIN_LEASE_TTL)}: etcd grants no shorter lease"
        )
    return value


LeaseTTL = Annotated[Duration, AfterValidator(_lease_ttl)]
"""The TTL of an etcd lease: a :data:`Duration` of at least :data:`MIN_LEASE_TTL`."""


def _not_empty_secret(value: SecretStr) -> SecretStr:
    # An empty secret is nearly always a templating slip (an EnvironmentFile line whose
    # value went missing). Taken as "no secret" it would quietly turn authentication
    # off; taken as a secret it fails only at run time. Refuse it while loading, so
    # that show-config and run agree.
    if not value.get_secret_value():
        raise ValueError("must not be empty (leave it unset instead)")
    return value


NonEmptySecret = Annotated[SecretStr, AfterValidator(_not_empty_secret)]
"""A :class:`~pydantic.SecretStr` that refuses ``""``: leave such a setting unset instead."""

# ----------------------------------------------------------------- shared sub-models


@final
class ClusterSettings(BaseModel):
    """Where one cluster's state lives in etcd; the same for every service of a cluster.

    The TOML table is ``[cluster]``; environment variables ``PGCM_CLUSTER__NAMESPACE``
    and ``PGCM_CLUSTER__MASTER_KEY`` (the original's ``PGCM_ETCD_NAMESPACE`` and
    ``PGCM_ETCD_POSTGRES_MASTER_KEY`` work too).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The original's spellings (flags, PGCM_ env, TOML) -> field; every service that
    # composes this table accepts them (see original_keys_of).
    original_keys: ClassVar[Mapping[str, str]] = {
        "etcd-namespace": "namespace",
        "etcd-postgres-master-key": "master_key",
        "postgres-master-etcd-key": "master_key",
    }

    namespace: str = Field(
        default="",
        description="Prefix of every etcd key pgcm reads or writes (the original's "
        "playground used '/postgres').",
    )
    master_key: str = Field(
        default="/master",
        description="Key under the namespace that holds the primary's bare address.",
    )

    @property
    def master_path(self) -> str:
        """The full etcd key of the primary's address: namespace + master key."""
        return self.layout.master.decode()

    @property
    def layout(self) -> KeyLayout:
        """Every etcd key of this cluster (pgcm_common.records documents them)."""
        return KeyLayout(self.namespace, self.master_key)


# ---------------------------------------------------------------------------- errors


@final
class InvalidSettings(ConfigError):
    """One or more settings are invalid; each line of the message names one key.

    Attributes:
        problems: ``(key, problem)`` pairs, in the order pydantic reported them.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        key, problem = self.problems[0] if self.problems else ("<settings>", "invalid")
        super().__init__(key, problem)
        self.args = ("\n".join(f"invalid setting {k!r}: {p}" for k, p in self.problems),)


_LEADING_KEY = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*")


def _problems(exc: ValidationError, cls: type[BaseModel]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    paths = {leaf.path for leaf in _leaves(cls)}
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required but not set"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
        if key not in paths:
            key = _key_named_by(message, within=key, paths=paths)
        problems.append((key, message))
    return problems


def _key_named_by(message: str, *, within: str, paths: set[str]) -> str:
    """Return the setting a check across several settings is about.

    Such checks (model validators) have no location of their own, so pydantic reports
    them against the whole model (or sub-model). Their messages start with the key they
    are about (``"bind_address '...' is not loopback"``, ``"tokens.alice is empty"``);
    that key, when it names a setting, is more use to an operator than the model.
    """
    prefix = f"{within}." if within else ""
    match = _LEADING_KEY.match(message)
    if match is not None:
        word = match.group(0)
        for candidate in (word, word.split(".", 1)[0]):
            if prefix + candidate in paths:
                return prefix + candidate
    return within or "<settings>"


# --------------------------------------------------------------------------- the model


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


_LOADING: ContextVar[_LoadRequest | None] = ContextVar("pgcm_settings_loading", default=None)


@dataclass(frozen=True, slots=True)
class _LoadRequest:
    table: Mapping[str, object]


class PgcmSettings(BaseSettings):
    """Base of every service's settings model (designed for subclassing).

    Subclasses set ``section`` to their TOML table name and may map the original's flag
    names of their own settings to field paths in ``original_keys``; a shared table's
    model carries its own ``original_keys`` (see :func:`original_keys_of`). Fields whose
    type is a pydantic model named in :data:`SHARED_TABLES` (``cluster``, ``etcd``,
    ``pgbouncer``) are read from the top-level table of that name; every other field
    from the ``[<section>]`` table.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        validate_default=True,
    )

    section: ClassVar[str] = ""
    original_keys: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files: one config path only
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Order the sources: flags (init), env, the original's env names, then TOML."""
        return (
            init_settings,
            env_settings,
            _LegacyEnvSource(settings_cls),
            _TomlTableSource(settings_cls),
        )


@final
class _TomlTableSource(PydanticBaseSettingsSource):
    """Values from the TOML file of the current :func:`load_settings` call."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[object, str, bool]:  # noqa: ARG002
        return None, field_name, False  # __call__ does the work: whole tables at once

    def __call__(self) -> dict[str, Any]:
        request = _LOADING.get()
        return dict(request.table) if request is not None else {}


@final
class _LegacyEnvSource(PydanticBaseSettingsSource):
    """The original's environment names: ``PGCM_`` + the flag name with ``_`` for ``-``.

    See :mod:`pgcm_common.original_config` for the names and what each one sets.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[object, str, bool]:  # noqa: ARG002
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        cls = self.settings_cls
        if not issubclass(cls, PgcmSettings):
            return {}
        env = {k.upper(): v for k, v in _environ().items()}
        leaves = {leaf.path: leaf for leaf in _leaves(cls)}
        found: dict[str, str] = {}
        for target, text in original_config.env_values(env, cls.section).items():
            table, key = target.split(".", 1)
            found[key if table == cls.section else target] = text
        for original, path in original_keys_of(cls).items():
            # Further spellings some services accept; empty means unset, as in viper.
            text = env.get(original_config.original_env_name(original), "")
            if text and path not in found:
                found[path] = text
        result: dict[str, Any] = {}
        for path, text in found.items():
            leaf = leaves.get(path)
            if leaf is None:
                continue
            # viper split lists on whitespace; pgcm's flags split them on commas.
            texts = _LIST_SEPARATORS.split(text) if leaf.kind == "list" else [text]
            _set_path(result, path, leaf.from_text(texts))
        return result


_LIST_SEPARATORS = re.compile(r"[\s,]+")


def _environ() -> Mapping[str, str]:
    import os  # noqa: PLC0415 - the only environment read in pgcm lives here

    return os.environ


# ------------------------------------------------------------------------- field walk


@dataclass(frozen=True, slots=True)
class _Leaf:
    """One settable value: a field of the service model or of a shared sub-model."""

    path: str  # "pause_timeout" or "etcd.endpoints"
    info: FieldInfo
    kind: str  # "bool" | "list" | "dict" | "scalar"

    @property
    def flag(self) -> str:
        return "--" + self.path.replace(".", "-").replace("_", "-")

    @property
    def dest(self) -> str:
        return "pgcm_setting__" + self.path.replace(".", "__")

    @property
    def env(self) -> str:
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


def _unwrap_optional(annotation: object) -> object:
    """Return the type under ``X | None`` and ``Annotated[X, ...]`` (``NonEmptySecret``)."""
    origin = typing.get_origin(annotation)
    if origin in {typing.Union, types.UnionType}:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap_optional(args[0])
    if origin is Annotated:
        return _unwrap_optional(typing.get_args(annotation)[0])
    return annotation


def _kind(annotation: object) -> str:
    inner = _unwrap_optional(annotation)
    origin = typing.get_origin(inner)
    if inner is bool:
        return "bool"
    if origin in {list, tuple, frozenset, set, Sequence}:
        return "list"
    if origin in {dict, Mapping}:
        return "dict"
    return "scalar"


def _submodel(info: FieldInfo) -> type[BaseModel] | None:
    inner = _unwrap_optional(info.annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner
    return None


def _leaves(cls: type[BaseModel], prefix: str = "") -> Iterator[_Leaf]:
    for name, info in cls.model_fields.items():
        sub = _submodel(info)
        if sub is not None:
            yield from _leaves(sub, f"{prefix}{name}.")
        else:
            yield _Leaf(f"{prefix}{name}", info, _kind(info.annotation))


def _set_path(target: dict[str, Any], path: str, value: object) -> None:
    *parents, last = path.split(".")
    node = target
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _merge(target: dict[str, Any], source: Mapping[str, object]) -> None:
    for key, value in source.items():
        current = target.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _merge(current, value)
        else:
            target[key] = value


def original_keys_of(cls: type[PgcmSettings]) -> dict[str, str]:
    """Return every original spelling ``cls`` accepts -> the dotted field path it sets.

    The shared tables' models (``cluster``, ``etcd``, ``pgbouncer``) carry the original's
    names of their own fields in an ``original_keys`` class attribute; they apply to
    every service that composes the table. The service's ``original_keys`` come last and
    win.
    """
    keys: dict[str, str] = {}
    for name in sorted(_shared_fields(cls)):
        sub = _submodel(cls.model_fields[name])
        own: Mapping[str, str] = getattr(sub, "original_keys", {})
        keys.update({original: f"{name}.{path}" for original, path in own.items()})
    keys.update(cls.original_keys)
    return keys


def _shared_fields(cls: type[PgcmSettings]) -> set[str]:
    return {
        name
        for name, info in cls.model_fields.items()
        if _submodel(info) is not None and name in SHARED_TABLES
    }


# ---------------------------------------------------------------------------- TOML


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
        _set_path(out, path, value)
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
    shared = _shared_fields(cls)
    ignored = (SHARED_TABLES | SERVICE_TABLES) - shared - {cls.section}
    result: dict[str, Any] = {}
    flat: dict[str, object] = {}
    for key, value in doc.items():
        if key in ignored:
            continue  # another service's table: one file configures them all
        if original_config.is_original_key(key):
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
            _merge(result, _normalise_table(value, where=key, aliases=original_keys_of(cls)))
        else:
            _merge(result, {key: _normalise_table(value, where=key, aliases={})})
    digest = hashlib.sha256(data).hexdigest()
    if not flat:
        return result, LoadedConfigFile(path=path, sha256=digest)
    original = original_config.read_original(flat)
    _merge_original(result, original, cls)
    loaded = LoadedConfigFile(
        path=path, sha256=digest, original_format=True, ignored=dict(original.ignored)
    )
    return result, loaded


def _merge_original(
    result: dict[str, Any], original: original_config.OriginalConfig, cls: type[PgcmSettings]
) -> None:
    """Add the settings of the original's flat keys; a pgcm table may not set them too."""
    for table, keys in original.tables_for(cls.section).items():
        for key, value in keys.items():
            path = key if table == cls.section else f"{table}.{key}"
            node: object = result
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                source = original.sources[f"{table}.{key}"]
                raise ConfigError(source, f"sets the same setting as [{table}] {key}")
            _set_path(result, path, value)


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
    token = _LOADING.set(_LoadRequest(table=table))
    try:
        kwargs: dict[str, Any] = dict(overrides or {})
        settings = cls(**kwargs)
    except ValidationError as exc:
        raise InvalidSettings(_problems(exc, cls)) from exc
    except SettingsError as exc:
        # pydantic-settings decodes list/dict values from the environment as JSON and
        # raises its own error on bad JSON (PGCM_TOKENS=5s): still a bad setting.
        raise ConfigError(_settings_error_key(exc, cls), "not valid JSON") from exc
    finally:
        _LOADING.reset(token)
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
    env = {name.upper(): value for name, value in _environ().items()}
    for leaf in _leaves(cls):
        in_field = leaf.path == field or leaf.path.startswith(f"{field}.")
        if in_field and leaf.kind in {"list", "dict"} and leaf.env in env:
            try:
                json.loads(env[leaf.env])
            except ValueError:
                return leaf.env
    return ENV_PREFIX + field.upper()


# ---------------------------------------------------------------------------- flags


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[PgcmSettings]) -> None:
    """Add one ``--flag`` per setting of ``cls`` (plus the original's flag names).

    Flags default to "not given" so they only override what the other sources say.
    Lists take comma-separated values or repeat the flag; maps take ``KEY=VALUE`` items.
    """
    by_path: dict[str, list[str]] = {}
    for original, path in original_keys_of(cls).items():
        by_path.setdefault(path, []).append(f"--{original}")
    group = parser.add_argument_group(
        "settings",
        f"Override any setting (TOML [{cls.section}] / PGCM_* environment variables).",
    )
    for leaf in _leaves(cls):
        names = [leaf.flag, *(n for n in by_path.get(leaf.path, []) if n != leaf.flag)]
        help_text = _help(leaf)
        if leaf.kind == "bool":
            group.add_argument(
                *names,
                dest=leaf.dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif leaf.kind in {"list", "dict"}:
            group.add_argument(
                *names,
                dest=leaf.dest,
                action="append",
                default=argparse.SUPPRESS,
                metavar="KEY=VALUE,..." if leaf.kind == "dict" else "VALUE,...",
                help=help_text,
            )
        else:
            group.add_argument(
                *names,
                dest=leaf.dest,
                default=argparse.SUPPRESS,
                metavar=leaf.path.rsplit(".", 1)[-1].upper(),
                help=help_text,
            )


def _help(leaf: _Leaf) -> str:
    parts = [leaf.info.description or ""]
    default = _default_of(leaf.info)
    if default is not PydanticUndefined and not _is_secret(leaf.info):
        parts.append(f"(default: {_show(default)}; env {leaf.env})")
    else:
        parts.append(f"(env {leaf.env})")
    # argparse treats % specially in help text.
    return " ".join(p for p in parts if p).replace("%", "%%")


def flag_overrides(namespace: argparse.Namespace, cls: type[PgcmSettings]) -> dict[str, object]:
    """Collect the flags the user gave into a nested dict for :func:`load_settings`.

    Raises:
        ConfigError: a map flag item is not ``KEY=VALUE``.
    """
    given = vars(namespace)
    result: dict[str, Any] = {}  # nested by path; built with _set_path
    for leaf in _leaves(cls):
        if leaf.dest not in given:
            continue
        value = given[leaf.dest]
        if leaf.kind in {"list", "dict"}:
            value = leaf.from_text(value)
        _set_path(result, leaf.path, value)
    return result


# --------------------------------------------------------------------------- render


def _default_of(info: FieldInfo) -> object:
    return info.get_default(call_default_factory=True, validated_data={})


def _is_secret(info: FieldInfo) -> bool:
    return _unwrap_optional(info.annotation) is SecretStr


def _is_secret_map(info: FieldInfo) -> bool:
    """Return whether the field is a mapping whose values are secrets (named tokens)."""
    inner = _unwrap_optional(info.annotation)
    if typing.get_origin(inner) not in {dict, Mapping}:
        return False
    args = typing.get_args(inner)
    key_and_value = 2  # dict[K, V]: the value type is the second argument
    return len(args) == key_and_value and _unwrap_optional(args[1]) is SecretStr


def _show(value: object) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


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
    shared = _shared_fields(cls)
    service_fields = {n: i for n, i in cls.model_fields.items() if n not in shared}
    lines += ["", f"[{cls.section}]"]
    lines += _render_fields(service_fields, data, obj=settings, prefix="", table=cls.section)
    for name in sorted(shared):
        sub = _submodel(cls.model_fields[name])
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
        leaf = _Leaf(prefix + name, info, _kind(info.annotation))
        out = tables if leaf.kind == "dict" else lines
        out.append("")
        out += _comment(info.description or name)
        default = _default_of(info)
        meta = f"env: {leaf.env}"
        if default is not PydanticUndefined and not _is_secret(info):
            meta = f"default: {_show(default)}; {meta}"
        out += _comment(meta)
        value = data.get(name)
        if _is_secret(info):
            secret = getattr(obj, name)
            shown = REDACTED if secret is not None and secret.get_secret_value() else "(unset)"
            out.append(f"# {name} = {shown}")
        elif value is None:
            out.append(f"# {name} = (unset)")
        elif _is_secret_map(info):
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


# ------------------------------------------------------------------------------- CLI


def common_arguments(cls: type[PgcmSettings]) -> argparse.ArgumentParser:
    """Build a parent parser with ``--config-file``, logging options and every setting.

    Use it as ``parents=[...]`` of the main parser and of each subcommand, so options
    work before and after the subcommand. Every option defaults to "not given".
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config-file",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="TOML file; this service reads its own table and the shared tables "
        "(env PGCM_CONFIG_FILE).",
    )
    parent.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="lowest level logged (default: info)",
    )
    parent.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=["auto", "json", "console"],
        help="auto: JSON unless stderr is a terminal (default: auto); lines to the "
        "systemd journal start with their syslog priority; NO_COLOR turns colours off",
    )
    add_settings_arguments(parent, cls)
    return parent


def settings_from_args(
    cls: type[S], namespace: argparse.Namespace
) -> tuple[S, LoadedConfigFile | None]:
    """Load ``cls`` from parsed arguments (``--config-file``, flags) and the environment.

    ``--config-file`` falls back to ``$PGCM_CONFIG_FILE`` (systemd units set it).

    Raises:
        ConfigError: see :func:`load_settings`.
    """
    config_file: Path | None = getattr(namespace, "config_file", None)
    if config_file is None and (env_file := _environ().get(ENV_PREFIX + "CONFIG_FILE")):
        config_file = Path(env_file)
    settings, loaded = load_settings(
        cls, config_file=config_file, overrides=flag_overrides(namespace, cls)
    )
    _log_original_format(loaded)
    return settings, loaded


def _log_original_format(loaded: LoadedConfigFile | None) -> None:
    """Say that the original's format was read, and name its keys pgcm ignores (once)."""
    if loaded is not None and loaded.original_format:
        _log.info(
            "config_file.original_format",
            path=str(loaded.path),
            msg="read the original's flat format; convert-config prints the pgcm file",
        )
    ignored = dict(loaded.ignored) if loaded is not None else {}
    ignored.update(original_config.ignored_in_env({k.upper(): v for k, v in _environ().items()}))
    if ignored:
        _log.warning(
            "config.keys_ignored",
            keys=sorted(ignored),
            reasons=ignored,
            msg="the original read these keys; pgcm has no use for them and ignores them",
        )
