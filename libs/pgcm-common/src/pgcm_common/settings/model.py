"""The base model of every service's settings and the sources pydantic reads it from.

Values come from, in rising order of precedence: the model's defaults, the TOML file
(:func:`toml_values`, set by the loader), the original's environment names, pgcm's own
environment names, and command-line flags (passed to the model as init values).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, final

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pgcm_common.settings import original
from pgcm_common.settings.fields import ENV_PREFIX, environ, leaves, set_path, submodel

__all__ = [
    "SHARED_TABLES",
    "PgcmSettings",
    "ignored_tables",
    "original_keys_of",
    "setting_table",
    "shared_fields",
    "toml_values",
]

# The tables whose models live in pgcm-common; every service composes some of them.
SHARED_TABLES = frozenset({"cluster", "etcd", "pgbouncer"})

# The TOML tables of the load_settings call in progress (pydantic builds the sources
# itself, so they cannot be handed the file's content directly).
_TOML: ContextVar[Mapping[str, object] | None] = ContextVar("pgcm_settings_toml", default=None)


@contextmanager
def toml_values(tables: Mapping[str, object]) -> Iterator[None]:
    """Make ``tables`` (nested by field path) the TOML source of models built inside."""
    token = _TOML.set(tables)
    try:
        yield
    finally:
        _TOML.reset(token)


class PgcmSettings(BaseSettings):
    """Base of every service's settings model (designed for subclassing).

    A service's model says everything the library needs to know about the service:

    * ``section``: its own TOML table;
    * ``original_keys``: the original's names of its own settings -> field paths (a
      shared table's model carries its own ``original_keys``, see
      :func:`original_keys_of`);
    * ``other_tables``: the tables of the other services, which one file may hold and
      this service ignores (they are named here because each service may be installed
      alone, without the others' models);
    * ``conversion_notes``: comment lines that ``convert-config`` adds after a converted
      key of its table.

    Fields whose type is a pydantic model named in :data:`SHARED_TABLES` (``cluster``,
    ``etcd``, ``pgbouncer``) are read from the top-level table of that name; every other
    field from the ``[<section>]`` table. A service names its model in the
    ``pgcm.settings`` entry point group, for ``convert-config``
    (:mod:`pgcm_common.settings.convert`).
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
    other_tables: ClassVar[frozenset[str]] = frozenset()
    conversion_notes: ClassVar[Mapping[str, Sequence[str]]] = {}

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
    """Values from the TOML file being loaded (see :func:`toml_values`)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[object, str, bool]:  # noqa: ARG002
        return None, field_name, False  # __call__ does the work: whole tables at once

    def __call__(self) -> dict[str, Any]:
        tables = _TOML.get()
        return dict(tables) if tables is not None else {}


@final
class _LegacyEnvSource(PydanticBaseSettingsSource):
    """The original's environment names: ``PGCM_`` + the flag name with ``_`` for ``-``.

    See :mod:`pgcm_common.settings.original` for the names and what each one sets.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[object, str, bool]:  # noqa: ARG002
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        cls = self.settings_cls
        if not issubclass(cls, PgcmSettings):
            return {}
        env = {k.upper(): v for k, v in environ().items()}
        by_path = {leaf.path: leaf for leaf in leaves(cls)}
        found = original.env_values(env, original_keys_of(cls))
        result: dict[str, Any] = {}
        for path, text in found.items():
            leaf = by_path.get(path)
            if leaf is None:
                continue
            # viper split lists on whitespace; pgcm's flags split them on commas.
            texts = _LIST_SEPARATORS.split(text) if leaf.kind == "list" else [text]
            set_path(result, path, leaf.from_text(texts))
        return result


_LIST_SEPARATORS = re.compile(r"[\s,]+")


def original_keys_of(cls: type[PgcmSettings]) -> dict[str, str]:
    """Return every original spelling ``cls`` accepts -> the dotted field path it sets.

    The shared tables' models (``cluster``, ``etcd``, ``pgbouncer``) carry the original's
    names of their own fields in an ``original_keys`` class attribute; they apply to
    every service that composes the table. The service's ``original_keys`` come last and
    win.
    """
    keys: dict[str, str] = {}
    for name in sorted(shared_fields(cls)):
        sub = submodel(cls.model_fields[name])
        own: Mapping[str, str] = getattr(sub, "original_keys", {})
        keys.update({key: f"{name}.{path}" for key, path in own.items()})
    keys.update(cls.original_keys)
    return keys


def shared_fields(cls: type[PgcmSettings]) -> set[str]:
    """Return the fields of ``cls`` read from a shared top-level table (``[etcd]``)."""
    return {
        name
        for name, info in cls.model_fields.items()
        if submodel(info) is not None and name in SHARED_TABLES
    }


def setting_table(cls: type[PgcmSettings], path: str) -> tuple[str, str]:
    """Return the TOML table and key of a field path of ``cls``: ``("etcd", "endpoints")``."""
    head, dot, rest = path.partition(".")
    if dot and head in shared_fields(cls):
        return head, rest
    return cls.section, path


def ignored_tables(cls: type[PgcmSettings]) -> frozenset[str]:
    """Return the top-level tables ``cls`` skips: other services' and unused shared ones."""
    return frozenset((set(SHARED_TABLES) - shared_fields(cls)) | cls.other_tables)
