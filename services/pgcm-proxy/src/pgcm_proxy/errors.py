"""Errors of pgcm-proxy.

The tree::

    PgcmError (pgcm_common.errors)
    ├── RejectedAddress     an etcd value that is not a safe host; the last good config stays
    ├── RoutingNotConfirmed SHOW DATABASES does not route to the new host after RELOAD
    ├── PgBouncersFailed    (pgcm_common.pausing) applying failed on some PgBouncer (every
    │                       endpoint's error kept)
    └── ConfigError
        └── TemplateError   the pgbouncer.ini template cannot be rendered safely
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import final

from pgcm_common.errors import ConfigError, PgcmError
from pgcm_common.pausing import PgBouncersFailed
from pgcm_common.untrusted import excerpt

__all__ = ["PgBouncersFailed", "RejectedAddress", "RoutingNotConfirmed", "TemplateError"]


@final
class RejectedAddress(PgcmError):
    """An etcd value that must not be written into pgbouncer.ini."""

    def __init__(self, reason: str, raw: bytes | None) -> None:
        self.reason = reason
        self.raw = raw
        shown = "<none>" if raw is None else excerpt(raw)
        super().__init__(f"refusing primary address ({reason}): {shown}")


@final
class TemplateError(ConfigError):
    """The pgbouncer.ini template is invalid."""

    def __init__(self, origin: str, line: int | None, problem: str) -> None:
        self.origin = origin
        self.line = line
        where = origin if line is None else f"{origin}:{line}"
        super().__init__("pgbouncer_config_template_file", f"{where}: {problem}")


@final
class RoutingNotConfirmed(PgcmError):
    """A PgBouncer does not route every templated database to the expected host."""

    def __init__(self, endpoint: str, expected: str, wrong: Mapping[str, str | None]) -> None:
        self.endpoint = endpoint
        self.expected = expected
        self.wrong = dict(wrong)
        shown = ", ".join(f"{db}->{host}" for db, host in sorted(self.wrong.items(), key=str))
        super().__init__(f"PgBouncer {endpoint} does not route to {expected}: {shown}")
