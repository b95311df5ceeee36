"""The environment pgcm gives to the programs it runs (crm_mon, cibadmin, crm_resource...).

The services' own environment holds secrets (``PGCM_TOKEN``, ``PGCM_PGBOUNCER__PASSWORD``,
``PGCM_POSTGRES_DSN``, ``PGCM_ETCD__PASSWORD``...), and a child process inherits
everything by default: any tool, or anything it runs in turn, could read or log them.
Children get only what they need: the search path, the locale, the time zone, a
temporary directory, and the variables Pacemaker's tools read (``CIB_*`` such as
``CIB_file`` for a shadow or saved CIB, ``PCMK_*``, ``HA_*``, ``OCF_*``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

__all__ = ["child_environment"]

_KEPT_NAMES: Final = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "HOME"})
_KEPT_PREFIXES: Final = ("LC_", "CIB_", "PCMK_", "HA_", "OCF_")


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the minimal environment for a child process, taken from ``environ``.

    Args:
        environ: the environment to filter (default: this process's).
    """
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if name in _KEPT_NAMES or name.startswith(_KEPT_PREFIXES)
    }
