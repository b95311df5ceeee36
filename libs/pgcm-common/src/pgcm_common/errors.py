"""The root of every error pgcm raises on purpose.

Each package adds subclasses in its own ``errors`` module (or next to the adapter that
raises them) and never raises a bare ``Exception``::

    PgcmError
    ├── ConfigError                  bad settings: exit code 2, message names the key
    │   └── InvalidSettings          (settings) one line per invalid key
    ├── PgcmFatalError               cannot continue: exit code 1, systemd restarts the unit
    ├── EtcdError                    etcd said no or could not be reached
    │   ├── EtcdUnavailable          no endpoint answered
    │   ├── EtcdCompacted            (etcd) a watch asked for a compacted revision
    │   └── EtcdLeaseExpired         (etcd) a lease was gone when kept alive
    ├── PgBouncerError               the admin console refused or could not be reached
    │   ├── PgBouncerUnreachable     (pgbouncer)
    │   ├── PgBouncerAuthError       (pgbouncer)
    │   ├── PgBouncerCommandRefused  (pgbouncer) carries command, sqlstate, message
    │   └── PgBouncerProtocolError   (pgbouncer)
    ├── PostgresError                PostgreSQL refused or could not be reached
    │   ├── PostgresUnreachable      (postgres)
    │   ├── PostgresAuthError        (postgres)
    │   ├── PostgresQueryError       (postgres) carries statement, sqlstate, message
    │   └── PostgresProtocolError    (postgres)
    ├── PacemakerError               crm_mon / crm_resource failed or printed nonsense
    │   ├── CrmMonParseError         (pacemaker) malformed or untrustworthy XML
    │   ├── PromotableResourceNotFound (pacemaker)
    │   ├── PacemakerCommandFailed   (pacemaker) non-zero exit, with stderr
    │   └── NodeAddressUnknown       (pacemaker)
    ├── RecordError                  (records) an etcd value that is not the record it should be
    └── FailoverError                a switchover step failed (pgcm-failover adds its own)

Subclasses marked ``(module)`` live next to the code that raises them and are exported
from ``pgcm_common.<module>``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EtcdError",
    "EtcdUnavailable",
    "FailoverError",
    "PacemakerError",
    "PgBouncerError",
    "PgcmError",
    "PgcmFatalError",
    "PostgresError",
]


class PgcmError(Exception):
    """Base class of every pgcm error."""


class ConfigError(PgcmError):
    """The settings are invalid; the message names the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"invalid setting {key!r}: {problem}")


class PgcmFatalError(PgcmError):
    """The process cannot go on; it exits 1 so its supervisor restarts it and alerts."""


class EtcdError(PgcmError):
    """An etcd operation failed."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered."""


class PgBouncerError(PgcmError):
    """A PgBouncer admin console command failed."""


class PostgresError(PgcmError):
    """A connection to PostgreSQL or a statement on it failed."""


class PacemakerError(PgcmError):
    """A Pacemaker tool failed or printed output we cannot trust."""


class FailoverError(PgcmError):
    """A switchover step failed."""
