"""``convert-config``: the original's flat file printed in pgcm's format.

The original's keys become the settings the installed services' models say they become:
each service names its settings model in the ``pgcm.settings`` entry point group of its
package (``proxy = "pgcm_proxy.settings:ProxySettings"``), so pgcm-common names no
service. A key no installed model claims (a service installed elsewhere, as with the
Debian packages, one service per environment) is kept as it is, at the top of the
result: every pgcm service reads the original's keys beside pgcm tables, so the result
still configures every service.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import tomli_w

from pgcm_common.settings import original
from pgcm_common.settings.model import (
    PgcmSettings,
    original_keys_of,
    setting_table,
)

__all__ = ["ENTRY_POINT_GROUP", "convert_original_file", "installed_services"]

ENTRY_POINT_GROUP = "pgcm.settings"


def installed_services() -> tuple[type[PgcmSettings], ...]:
    """Return the settings models of the pgcm services installed here, by table name.

    Raises:
        TypeError: an entry point names no settings model, or one of another table
            (a packaging mistake).
    """
    found: dict[str, type[PgcmSettings]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        model = point.load()
        if not (isinstance(model, type) and issubclass(model, PgcmSettings)):
            raise TypeError(f"entry point {point.value} is not a pgcm settings model")
        if model.section != point.name:
            raise TypeError(f"entry point {point.name} names the model of [{model.section}]")
        found[point.name] = model
    return tuple(found[name] for name in sorted(found))


def _targets(services: tuple[type[PgcmSettings], ...]) -> dict[str, tuple[str, str]]:
    """Return original key -> (table, key) over every registered service's model."""
    targets: dict[str, tuple[str, str]] = {}
    for cls in services:
        for name, path in original_keys_of(cls).items():
            targets.setdefault(name, setting_table(cls, path))
    return targets


def _notes(services: tuple[type[PgcmSettings], ...]) -> dict[tuple[str, str], list[str]]:
    return {
        (cls.section, key): [f"# {line}" for line in lines]
        for cls in services
        for key, lines in cls.conversion_notes.items()
    }


def convert_original_file(
    path: Path, services: tuple[type[PgcmSettings], ...] | None = None
) -> str:
    """Return the pgcm TOML file equivalent to the original's file at ``path``.

    The result holds the tables of the installed services (the shared tables first),
    so one file still configures them all; each key says which original key it came
    from. Keys pgcm ignores are listed in a comment at the top. Secrets
    (``pgbouncer-password``) are carried over as they are: the result is as sensitive
    as the original file.

    Args:
        path: the original's file.
        services: the services' models to convert for; default: the installed ones.

    Raises:
        ConfigError: the file cannot be read or parsed, has a key that is not the
            original's, or a value of the wrong type.
    """
    services = installed_services() if services is None else services
    targets = _targets(services)
    read = original.read_original(
        original.read_original_file(path),
        {name: f"{table}.{key}" for name, (table, key) in targets.items()},
    )
    lines = [
        f"# pgcm configuration converted from {path} (the original's flat format).",
        "# Every pgcm service reads the tables it needs from this one file.",
    ]
    if read.ignored:
        lines.append("# The original's keys pgcm ignores:")
        lines += [f"#   {name}: {why}" for name, why in sorted(read.ignored.items())]
    if read.unclaimed:
        # TOML puts top-level keys before the first table.
        lines += [
            "",
            "# The original's keys of pgcm services not installed beside this one, kept",
            "# as they are (those services read them so): convert them with their own",
            "# convert-config.",
        ]
        lines += [tomli_w.dumps({k: v}).rstrip("\n") for k, v in read.unclaimed.items()]
    tables: dict[str, dict[str, object]] = {}
    for dotted, value in read.values.items():
        table, key = dotted.split(".", 1)
        tables.setdefault(table, {})[key] = value
    notes = _notes(services)
    # Tables come in the order the original's key list first sets them: the shared
    # tables (its etcd and PgBouncer keys come first), then the services'.
    for table, keys in tables.items():
        lines += ["", f"[{table}]"]
        for key, value in keys.items():
            lines.append(f"# from {read.sources[f'{table}.{key}']}")
            lines.append(tomli_w.dumps({key: value}).rstrip("\n"))
        # A model's remarks on what the converted values mean, after the table's keys.
        for key in keys:
            lines += notes.get((table, key), [])
    return "\n".join(lines) + "\n"
