"""Errors of pgcm-proxy.

The tree::

    PgcmError (pgcm_common.errors)
    ├── RejectedAddress   an etcd value that is not a safe host; the last good config stays
    └── ConfigError
        └── TemplateError the pgbouncer.ini template cannot be rendered safely
"""

from __future__ import annotations

from typing import final

from pgcm_common.errors import ConfigError, PgcmError

__all__ = ["RejectedAddress", "TemplateError"]

_SHOWN_BYTES = 80


@final
class RejectedAddress(PgcmError):
    """An etcd value that must not be written into pgbouncer.ini."""

    def __init__(self, reason: str, raw: bytes | None) -> None:
        self.reason = reason
        self.raw = raw
        shown = "<none>" if raw is None else repr(raw[:_SHOWN_BYTES])
        super().__init__(f"refusing primary address ({reason}): {shown}")


@final
class TemplateError(ConfigError):
    """The pgbouncer.ini template is invalid."""

    def __init__(self, origin: str, line: int | None, problem: str) -> None:
        self.origin = origin
        self.line = line
        where = origin if line is None else f"{origin}:{line}"
        super().__init__("pgbouncer_config_template_file", f"{where}: {problem}")
