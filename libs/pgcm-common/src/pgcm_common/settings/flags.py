"""Command-line flags of every setting, and loading settings from parsed arguments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic_core import PydanticUndefined

from pgcm_common.settings import original
from pgcm_common.settings.fields import (
    ENV_PREFIX,
    Leaf,
    default_of,
    environ,
    is_secret,
    leaves,
    set_path,
    show,
)
from pgcm_common.settings.loading import LoadedConfigFile, load_settings
from pgcm_common.settings.model import PgcmSettings, original_keys_of

__all__ = ["add_settings_arguments", "common_arguments", "flag_overrides", "settings_from_args"]

_log = structlog.get_logger("pgcm.settings")

S = TypeVar("S", bound=PgcmSettings)


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[PgcmSettings]) -> None:
    """Add one ``--flag`` per setting of ``cls`` (plus the original's flag names).

    Flags default to "not given" so they only override what the other sources say.
    Lists take comma-separated values or repeat the flag; maps take ``KEY=VALUE`` items.
    """
    by_path: dict[str, list[str]] = {}
    for name, path in original_keys_of(cls).items():
        if original.is_flag(name):
            by_path.setdefault(path, []).append(f"--{name}")
    group = parser.add_argument_group(
        "settings",
        f"Override any setting (TOML [{cls.section}] / PGCM_* environment variables).",
    )
    for leaf in leaves(cls):
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


def _help(leaf: Leaf) -> str:
    parts = [leaf.info.description or ""]
    default = default_of(leaf.info)
    if default is not PydanticUndefined and not is_secret(leaf.info):
        parts.append(f"(default: {show(default)}; env {leaf.env})")
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
    for leaf in leaves(cls):
        if leaf.dest not in given:
            continue
        value = given[leaf.dest]
        if leaf.kind in {"list", "dict"}:
            value = leaf.from_text(value)
        set_path(result, leaf.path, value)
    return result


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
    if config_file is None and (env_file := environ().get(ENV_PREFIX + "CONFIG_FILE")):
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
    ignored.update(original.ignored_in_env({k.upper(): v for k, v in environ().items()}))
    if ignored:
        _log.warning(
            "config.keys_ignored",
            keys=sorted(ignored),
            reasons=ignored,
            msg="the original read these keys; pgcm has no use for them and ignores them",
        )
