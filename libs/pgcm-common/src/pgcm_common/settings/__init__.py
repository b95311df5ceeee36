"""Settings shared by every pgcm service.

Each service defines one frozen settings model (a :class:`PgcmSettings` subclass) and
loads it once in ``cli.py`` with :func:`load_settings`. Values come from, in rising order
of precedence (the same as the original's viper setup):

1. the defaults in the model;
2. a TOML file given with ``--config-file``;
3. the environment: ``PGCM_<FIELD>`` and ``PGCM_<TABLE>__<FIELD>`` for shared tables
   (the original's names, such as ``PGCM_ETCD_NAMESPACE``, are read too, below the new
   names);
4. command-line flags, generated from the model by :func:`add_settings_arguments`.

One TOML file can configure every service: each service reads its own table (its
model's ``section``) and the shared tables it composes (``[cluster]``, ``[etcd]``,
``[pgbouncer]``), and ignores the tables of the other services. Inside the tables it
reads, an unknown key is an error. The library names no service: each service's model
declares its table, the original's names of its settings and its neighbours' tables,
and names itself in the ``pgcm.settings`` entry point group for ``convert-config``.

The modules, by concern:

* :mod:`.values`: durations, lease TTLs, non-empty secrets;
* :mod:`.cluster`: the ``[cluster]`` table (``[etcd]`` and ``[pgbouncer]`` live beside
  their clients, in :mod:`pgcm_common.etcd` and :mod:`pgcm_common.pgbouncer`);
* :mod:`.model`: :class:`PgcmSettings` and the sources it is read from;
* :mod:`.loading`: the TOML file, merged with the original's flat keys
  (:mod:`.original`; :mod:`.convert` prints such a file in pgcm's format);
* :mod:`.flags`: one command-line flag per setting;
* :mod:`.render`: ``show-config``'s TOML;
* :mod:`.problems`: invalid settings reported one key per line;
* :mod:`.fields`: the walk over a model's settable values that all of them share.
"""

from __future__ import annotations

from pgcm_common.settings.cluster import ClusterSettings
from pgcm_common.settings.fields import ENV_PREFIX
from pgcm_common.settings.flags import (
    add_settings_arguments,
    common_arguments,
    flag_overrides,
    settings_from_args,
)
from pgcm_common.settings.loading import LoadedConfigFile, load_settings
from pgcm_common.settings.model import (
    SHARED_TABLES,
    PgcmSettings,
    original_keys_of,
)
from pgcm_common.settings.problems import InvalidSettings
from pgcm_common.settings.render import REDACTED, render_toml
from pgcm_common.settings.values import (
    MIN_LEASE_TTL,
    Duration,
    LeaseTTL,
    NonEmptySecret,
    PositiveDuration,
    format_duration,
    parse_duration,
)

__all__ = [
    "ENV_PREFIX",
    "MIN_LEASE_TTL",
    "REDACTED",
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
