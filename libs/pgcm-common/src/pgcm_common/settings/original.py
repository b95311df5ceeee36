"""The original's flat ``config.toml``, read as pgcm settings or converted to pgcm's format.

The Go original was one binary (``pgcm supervise|proxy|failover``) reading one flat TOML
file of dashed top-level keys, the names of its flags (``etcd-endpoints = [...]``,
``bind-address = ":8080"``), and the same names from the environment as viper spells
them: ``PGCM_`` + the key upper-cased with ``_`` for ``-`` (``PGCM_ETCD_ENDPOINTS``).

:data:`ORIGINAL_KEYS` lists every key the original declared or read, each with the pgcm
setting it becomes (as ``table.key`` of pgcm's file) or, for the original's dead keys,
why pgcm ignores it. :func:`read_original` turns the flat keys of a file into pgcm
tables; the settings loader uses it so that every service accepts the original's file
unchanged, and :func:`convert_original_file` prints the equivalent pgcm file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, final

import tomli_w

from pgcm_common.errors import ConfigError
from pgcm_common.settings.values import parse_duration

__all__ = [
    "ORIGINAL_KEYS",
    "PGCM_TABLES",
    "OriginalConfig",
    "OriginalKey",
    "convert_original_file",
    "env_values",
    "ignored_in_env",
    "is_original_key",
    "original_env_name",
    "read_original",
    "tables_read_by",
]

Kind = Literal["text", "secret", "list", "duration", "port"]

# pgcm's tables in the order a converted file lists them, and which services read each
# shared table (pgcm-failover has no PgBouncer of its own).
PGCM_TABLES: tuple[str, ...] = ("cluster", "etcd", "pgbouncer", "proxy", "supervise", "failover")
_SHARED_READERS: Mapping[str, frozenset[str]] = {
    "cluster": frozenset({"proxy", "supervise", "failover"}),
    "etcd": frozenset({"proxy", "supervise", "failover"}),
    "pgbouncer": frozenset({"proxy", "supervise"}),
}


@final
@dataclass(frozen=True, slots=True)
class OriginalKey:
    """One key of the original's configuration.

    Attributes:
        name: the original's dashed name (its flag, its TOML key).
        target: the pgcm setting as ``table.key``; None for a key pgcm ignores.
        kind: how the value is read (viper's rules, see :func:`read_original`).
        note: for an ignored key, why; otherwise a remark for the docs (may be empty).
    """

    name: str
    target: str | None
    kind: Kind = "text"
    note: str = ""

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


_K = OriginalKey
# Order matters where two keys set one pgcm setting: the first one given wins, and it
# is the one the original itself read.
ORIGINAL_KEYS: tuple[OriginalKey, ...] = (
    _K("etcd-namespace", "cluster.namespace"),
    _K("etcd-postgres-master-key", "cluster.master_key"),
    _K("etcd-endpoints", "etcd.endpoints", "list"),
    _K("etcd-dial-timeout", "etcd.dial_timeout", "duration"),
    _K("etcd-timeout", "etcd.request_timeout", "duration"),
    _K(
        "etcd-dial-keep-alive-time",
        "etcd.keepalive_time",
        "duration",
        "the name the original read (its flag etcd-keep-alive-time was never read)",
    ),
    _K("etcd-keep-alive-time", "etcd.keepalive_time", "duration"),
    _K(
        "etcd-dial-keep-alive-timeout",
        "etcd.keepalive_timeout",
        "duration",
        "the name the original read (its flag etcd-keep-alive-timeout was never read)",
    ),
    _K("etcd-keep-alive-timeout", "etcd.keepalive_timeout", "duration"),
    _K("pgbouncer-user", "pgbouncer.user"),
    _K(
        "pgbouncer-password",
        "pgbouncer.password",
        "secret",
        "empty (the original's default) means no password",
    ),
    _K("pgbouncer-database", "pgbouncer.database"),
    _K("pgbouncer-socket-dir", "pgbouncer.host"),
    _K("pgbouncer-port", "pgbouncer.port", "port"),
    _K("pgbouncer-timeout", "pgbouncer.connect_timeout", "duration"),
    _K("pgbouncer-config-file", "proxy.pgbouncer_config_file"),
    _K("pgbouncer-config-template-file", "proxy.pgbouncer_config_template_file"),
    _K("etcd-stream-poll-interval", "proxy.poll_interval", "duration"),
    _K(
        "pgbouncer-retry-timeout",
        "proxy.retry_max_interval",
        "duration",
        "the name the original read (its flag pgbouncer-retry-interval was never read)",
    ),
    _K("pgbouncer-retry-interval", "proxy.retry_max_interval", "duration"),
    _K("bind-address", "supervise.bind_address"),
    _K("host-key-update-retry-interval", "supervise.retry_interval", "duration"),
    _K("pacemaker-poll-interval", "supervise.crm_mon_interval", "duration"),
    _K("pacemaker-get-timeout", "supervise.crm_mon_timeout", "duration"),
    _K("failover-api-endpoints", "failover.endpoints", "list"),
    _K("health-check-timeout", "failover.health_check_timeout", "duration"),
    _K("lock-timeout", "failover.lock_timeout", "duration"),
    _K("pause-timeout", "failover.pause_timeout", "duration"),
    _K("pause-expiry", "failover.pause_expiry", "duration"),
    _K("resume-timeout", "failover.resume_timeout", "duration"),
    _K("pacemaker-timeout", "failover.pacemaker_timeout", "duration"),
    _K(
        "postgres-master-crm-xpath",
        None,
        note="pgcm-supervise finds the primary in crm_mon's XML through the promotable "
        "clone of [supervise] resource_id, not through an XPath into the CIB",
    ),
    _K(
        "etcd-get-timeout",
        None,
        "duration",
        note="pgcm bounds every etcd request, the proxy's reads included, with "
        "etcd-timeout ([etcd] request_timeout)",
    ),
    _K(
        "config-file",
        None,
        note="the file to read is named by --config-file or PGCM_CONFIG_FILE, never by "
        "the file itself (the original did not read it either)",
    ),
)
del _K

_BY_NAME: Mapping[str, OriginalKey] = {key.name: key for key in ORIGINAL_KEYS}


def tables_read_by(section: str) -> frozenset[str]:
    """Return pgcm's tables that the service with this ``section`` reads."""
    return frozenset(t for t, readers in _SHARED_READERS.items() if section in readers) | {section}


@final
@dataclass(frozen=True, slots=True)
class OriginalConfig:
    """The flat keys of an original file, as pgcm settings.

    Attributes:
        tables: pgcm table -> key -> value, for every table any service reads.
        sources: ``table.key`` -> the original key its value came from.
        ignored: original key -> why pgcm ignores it (a dead key, or one overridden by
            the key the original read for the same setting).
    """

    tables: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    ignored: Mapping[str, str] = field(default_factory=dict)

    def tables_for(self, section: str) -> dict[str, dict[str, object]]:
        """Return the tables the service with this ``section`` reads (copies)."""
        wanted = tables_read_by(section)
        return {t: dict(keys) for t, keys in self.tables.items() if t in wanted}


def is_original_key(key: str) -> bool:
    """Return whether ``key`` is one of the original's top-level keys."""
    return key in _BY_NAME


def read_original(flat: Mapping[str, object]) -> OriginalConfig:
    """Map the original's flat keys to pgcm tables, reading values as the original did.

    Values are read with viper's rules where they matter: a list may also be one string
    of whitespace-separated items; a port may be a string (the original's flag was one).
    A duration must carry a unit: the original read a bare number as nanoseconds, pgcm
    as seconds, so ``5`` is refused rather than silently read a billion times longer.

    Raises:
        ConfigError: naming the original key: not one of the original's keys, or a
            value of the wrong type.
    """
    for name in flat:
        if name not in _BY_NAME:
            raise ConfigError(
                name, "unknown key: neither a pgcm table nor one of the original's keys"
            )
    tables: dict[str, dict[str, object]] = {}
    sources: dict[str, str] = {}
    ignored: dict[str, str] = {}
    for key in ORIGINAL_KEYS:  # in priority order, not the file's order
        if key.name not in flat:
            continue
        value = _read_value(key, flat[key.name])
        if key.kind == "secret" and value == "":
            continue  # the original sent no password then; pgcm's "unset" does the same
        if key.target is None:
            ignored[key.name] = key.note
            continue
        if key.target in sources:
            ignored[key.name] = (
                f"overridden by {sources[key.target]} (the key the original read for the "
                "same setting)"
            )
            continue
        table, name = key.target.split(".", 1)
        tables.setdefault(table, {})[name] = value
        sources[key.target] = key.name
    return OriginalConfig(tables=tables, sources=sources, ignored=ignored)


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


def env_values(env: Mapping[str, str], section: str) -> dict[str, str]:
    """Return ``table.key`` -> text for the original's variables set in ``env``.

    Only the tables the service with this ``section`` reads are returned. As in viper,
    an empty variable counts as unset; where two names set one setting, the one the
    original read wins.
    """
    wanted = tables_read_by(section)
    found: dict[str, str] = {}
    for key in ORIGINAL_KEYS:
        text = env.get(key.env, "")
        if key.target is None or not text or key.target in found:
            continue
        if key.target.split(".", 1)[0] in wanted:
            found[key.target] = text
    return found


def ignored_in_env(env: Mapping[str, str]) -> dict[str, str]:
    """Return the original's dead variables set in ``env`` -> why pgcm ignores them.

    ``PGCM_CONFIG_FILE`` is left out: pgcm reads it (it names the file to load).
    """
    return {
        key.env: key.note
        for key in ORIGINAL_KEYS
        if key.target is None and key.name != "config-file" and env.get(key.env, "")
    }


# ----------------------------------------------------------------------------- convert


def convert_original_file(path: Path) -> str:
    """Return the pgcm TOML file equivalent to the original's file at ``path``.

    The result holds every table any service reads, so one file still configures all
    three services; each key says which original key it came from. Keys pgcm ignores
    are listed in a comment at the top. Secrets (``pgbouncer-password``) are carried
    over as they are: the result is as sensitive as the original file.

    Raises:
        ConfigError: the file cannot be read or parsed, has a key that is not the
            original's, or a value of the wrong type.
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
    original = read_original(doc)
    lines = [
        f"# pgcm configuration converted from {path} (the original's flat format).",
        "# Every pgcm service reads the tables it needs from this one file.",
    ]
    if original.ignored:
        lines.append("# The original's keys pgcm ignores:")
        lines += [f"#   {name}: {why}" for name, why in sorted(original.ignored.items())]
    for table in PGCM_TABLES:
        keys = original.tables.get(table)
        if not keys:
            continue
        lines += ["", f"[{table}]"]
        for name, value in keys.items():
            lines.append(f"# from {original.sources[f'{table}.{name}']}")
            lines.append(tomli_w.dumps({name: value}).rstrip("\n"))
        if table == "supervise" and "bind_address" in keys:
            lines += _BIND_NOTE
    return "\n".join(lines) + "\n"


_BIND_NOTE = [
    "# The original's API had no authentication. pgcm-supervise refuses a non-loopback",
    "# bind_address without TLS (tls_cert_file/tls_key_file) or a token, unless",
    "# insecure = true: keep that only while the original's `pgcm failover` still calls it.",
    "# insecure = true",
]
