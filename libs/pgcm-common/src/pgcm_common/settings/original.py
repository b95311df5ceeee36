"""The original's flat ``config.toml``: its keys, and reading them as pgcm settings.

The Go original was one binary (``pgcm supervise|proxy|failover``) reading one flat TOML
file of dashed top-level keys, the names of its flags (``etcd-endpoints = [...]``,
``bind-address = ":8080"``), and the same names from the environment as viper spells
them: ``PGCM_`` + the key upper-cased with ``_`` for ``-`` (``PGCM_ETCD_ENDPOINTS``).

:data:`ORIGINAL_KEYS` lists every key the original declared or read: how the original
read its value, and, for the original's dead keys, why pgcm ignores it. Which pgcm
setting a live key becomes is not said here but by the settings models, each for its own
fields (``original_keys``, see :func:`pgcm_common.settings.original_keys_of`): the shared
tables' models in pgcm-common, every service's own model in the service.
:func:`read_original` maps the flat keys of a file through such a mapping; keys that no
model at hand claims are another service's and are handed back untouched.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, final

from pgcm_common.errors import ConfigError
from pgcm_common.settings.values import parse_duration

__all__ = [
    "ORIGINAL_KEYS",
    "OriginalConfig",
    "OriginalKey",
    "env_values",
    "ignored_in_env",
    "is_flag",
    "is_original_key",
    "original_env_name",
    "read_original",
    "read_original_file",
]

Kind = Literal["text", "secret", "list", "duration", "port"]


@final
@dataclass(frozen=True, slots=True)
class OriginalKey:
    """One key of the original's configuration.

    Attributes:
        name: the original's dashed name (its flag, its TOML key).
        kind: how the value is read (viper's rules, see :func:`read_original`).
        dead: for a key pgcm ignores, why; empty for a key that sets a pgcm setting.
        read_instead: the key the original's code read for the same setting, when this
            one is a flag it declared but never read; that key wins when both are set.
        note: a remark for the docs (may be empty).
        flag: whether pgcm also takes the name as a command-line flag (names the
            original only read from its file and environment are not flags).
    """

    name: str
    kind: Kind = "text"
    dead: str = ""
    read_instead: str = ""
    note: str = ""
    flag: bool = True

    @property
    def env(self) -> str:
        """Return the environment variable the original read for this key."""
        return original_env_name(self.name)


def original_env_name(key: str) -> str:
    """Return viper's environment name for ``key``: ``PGCM_`` + upper case, ``_`` for ``-``.

    The original set ``SetEnvPrefix("pgcm")``, ``AutomaticEnv()`` and a key replacer of
    ``-`` to ``_``: viper upper-cases prefix and key and joins them with ``_``.
    """
    return "PGCM_" + key.upper().replace("-", "_")


def _read_not_declared(read: str, declared: str, *, flag: bool) -> tuple[OriginalKey, ...]:
    """Return a duration the original's code read under another name than its flag's.

    Both names set the setting; the one the code read wins (it comes first).
    """
    note = f"the name the original read (its flag {declared} was never read)"
    return (
        OriginalKey(read, "duration", note=note, flag=flag),
        OriginalKey(declared, "duration", read_instead=read),
    )


_K = OriginalKey
ORIGINAL_KEYS: tuple[OriginalKey, ...] = (
    _K("etcd-namespace"),
    _K("etcd-postgres-master-key"),
    _K("etcd-endpoints", "list"),
    _K("etcd-dial-timeout", "duration"),
    _K("etcd-timeout", "duration"),
    *_read_not_declared("etcd-dial-keep-alive-time", "etcd-keep-alive-time", flag=False),
    *_read_not_declared("etcd-dial-keep-alive-timeout", "etcd-keep-alive-timeout", flag=False),
    _K("pgbouncer-user"),
    _K("pgbouncer-password", "secret", note="empty (the original's default) means no password"),
    _K("pgbouncer-database"),
    _K("pgbouncer-socket-dir"),
    _K("pgbouncer-port", "port"),
    _K("pgbouncer-timeout", "duration"),
    _K("pgbouncer-config-file"),
    _K("pgbouncer-config-template-file"),
    _K("etcd-stream-poll-interval", "duration"),
    # pgcm has long taken this one as a flag too.
    *_read_not_declared("pgbouncer-retry-timeout", "pgbouncer-retry-interval", flag=True),
    _K("bind-address"),
    _K("host-key-update-retry-interval", "duration"),
    _K("pacemaker-poll-interval", "duration"),
    _K("pacemaker-get-timeout", "duration"),
    _K("failover-api-endpoints", "list"),
    _K("health-check-timeout", "duration"),
    _K("lock-timeout", "duration"),
    _K("pause-timeout", "duration"),
    _K("pause-expiry", "duration"),
    _K("resume-timeout", "duration"),
    _K("pacemaker-timeout", "duration"),
    _K(
        "postgres-master-crm-xpath",
        dead="pgcm-supervise finds the primary in crm_mon's XML through the promotable "
        "clone of [supervise] resource_id, not through an XPath into the CIB",
    ),
    _K(
        "etcd-get-timeout",
        "duration",
        dead="pgcm bounds every etcd request, the proxy's reads included, with "
        "etcd-timeout ([etcd] request_timeout)",
    ),
    _K(
        "config-file",
        dead="the file to read is named by --config-file or PGCM_CONFIG_FILE, never by "
        "the file itself (the original did not read it either)",
    ),
)
del _K

_BY_NAME: Mapping[str, OriginalKey] = {key.name: key for key in ORIGINAL_KEYS}


@final
@dataclass(frozen=True, slots=True)
class OriginalConfig:
    """The flat keys of an original file, read through one mapping to pgcm settings.

    Attributes:
        values: setting path (as the mapping names it) -> value.
        sources: setting path -> the original key its value came from.
        ignored: original key -> why pgcm ignores it (a dead key, or one overridden by
            the key the original read for the same setting).
        unclaimed: the original's live keys the mapping does not name (another
            service's) -> their values, read as the original read them.
    """

    values: Mapping[str, object] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    ignored: Mapping[str, str] = field(default_factory=dict)
    unclaimed: Mapping[str, object] = field(default_factory=dict)


def is_original_key(key: str) -> bool:
    """Return whether ``key`` is one of the original's top-level keys."""
    return key in _BY_NAME


def is_flag(key: str) -> bool:
    """Return whether an original name (or a further spelling) is offered as a flag."""
    known = _BY_NAME.get(key)
    return known is None or known.flag


def _overridden(key: OriginalKey, given: Mapping[str, object]) -> bool:
    """Return whether the key the original read for the same setting is given too."""
    return bool(key.read_instead) and given.get(key.read_instead, "") != ""


def read_original(flat: Mapping[str, object], targets: Mapping[str, str]) -> OriginalConfig:
    """Read the original's flat keys as the original did and map them to settings.

    Values are read with viper's rules where they matter: a list may also be one string
    of whitespace-separated items; a port may be a string (the original's flag was one).
    A duration must carry a unit: the original read a bare number as nanoseconds, pgcm
    as seconds, so ``5`` is refused rather than silently read a billion times longer.
    Every key is checked so, also the keys ``targets`` does not name.

    Args:
        flat: the top-level keys of the file that are the original's.
        targets: original key -> the setting it sets (any path format: the caller's).

    Raises:
        ConfigError: naming the original key: not one of the original's keys, or a
            value of the wrong type.
    """
    for name in flat:
        if name not in _BY_NAME:
            raise ConfigError(
                name, "unknown key: neither a pgcm table nor one of the original's keys"
            )
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    ignored: dict[str, str] = {}
    unclaimed: dict[str, object] = {}
    for key in ORIGINAL_KEYS:  # in the original's order, not the file's
        if key.name not in flat:
            continue
        value = _read_value(key, flat[key.name])
        if key.kind == "secret" and value == "":
            continue  # the original sent no password then; pgcm's "unset" does the same
        if key.dead:
            ignored[key.name] = key.dead
        elif _overridden(key, flat):
            ignored[key.name] = (
                f"overridden by {key.read_instead} (the key the original read for the same setting)"
            )
        elif (path := targets.get(key.name)) is None:
            unclaimed[key.name] = value
        elif path in sources:
            ignored[key.name] = f"overridden by {sources[path]} (same setting)"
        else:
            values[path] = value
            sources[path] = key.name
    return OriginalConfig(values=values, sources=sources, ignored=ignored, unclaimed=unclaimed)


_BARE_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def _read_value(key: OriginalKey, value: object) -> object:
    if key.kind == "list":
        return _read_list(key, value)
    if key.kind == "port":
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(text, str) and text.strip().isdigit():
            return int(text)
        raise ConfigError(key.name, f"must be a port number, got {value!r}")
    if key.kind == "duration":
        return _read_duration(key, value)
    if not isinstance(value, str):
        raise ConfigError(key.name, "must be a string")
    return value  # text and secret


def _read_list(key: OriginalKey, value: object) -> list[str]:
    if isinstance(value, str):
        return value.split()  # viper (cast.ToStringSlice) splits a string on whitespace
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ConfigError(key.name, "must be a list of strings")


def _read_duration(key: OriginalKey, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(key.name, "must be a duration such as '5s'")
    text = str(value).strip()
    if _BARE_NUMBER.fullmatch(text):
        if float(text) != 0:
            raise ConfigError(
                key.name,
                f"{value!r} has no unit; the original read it as nanoseconds: write it "
                "with a unit, such as '5s' or '500ms'",
            )
        return "0s"
    try:
        parse_duration(text)
    except ValueError as exc:
        raise ConfigError(key.name, str(exc)) from exc
    return text


def env_values(env: Mapping[str, str], targets: Mapping[str, str]) -> dict[str, str]:
    """Return setting path -> text for the original's variables set in ``env``.

    ``targets`` maps original names to settings, as for :func:`read_original`; names
    it holds beyond the original's own (further spellings a model accepts) are read
    too, after them. As in viper, an empty variable counts as unset; where two names
    set one setting, the one the original read wins.
    """
    found: dict[str, str] = {}
    ordered = [key.name for key in ORIGINAL_KEYS if not key.read_instead]
    ordered += [key.name for key in ORIGINAL_KEYS if key.read_instead]
    ordered += [name for name in targets if name not in _BY_NAME]
    for name in ordered:
        path = targets.get(name)
        text = env.get(original_env_name(name), "")
        if path is not None and text and path not in found:
            found[path] = text
    return found


def ignored_in_env(env: Mapping[str, str]) -> dict[str, str]:
    """Return the original's dead variables set in ``env`` -> why pgcm ignores them.

    ``PGCM_CONFIG_FILE`` is left out: pgcm reads it (it names the file to load).
    """
    return {
        key.env: key.dead
        for key in ORIGINAL_KEYS
        if key.dead and key.name != "config-file" and env.get(key.env, "")
    }


def read_original_file(path: Path) -> dict[str, object]:
    """Return the top-level keys of a file in the original's flat format.

    Raises:
        ConfigError: the file cannot be read or parsed, or holds a table (it is then
            not the original's format).
    """
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("config_file", f"cannot read {str(path)!r}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config_file", f"{str(path)!r} is not valid TOML: {exc}") from exc
    for name, value in doc.items():
        if isinstance(value, dict):
            raise ConfigError(
                name, f"is a table: {str(path)!r} is not in the original's flat format"
            )
    return doc
