"""Structured logging for every pgcm process (structlog, configured once in ``cli.py``).

JSON lines on stderr when stderr is not a terminal (journald, files, CI), the console
renderer when it is, as the original did. Event names are dotted ``<subject>.<verb>``;
human text goes in ``msg=``. Secrets never reach the output: :func:`redact_secrets`
replaces any :class:`~pydantic.SecretStr` value and the value of any key that names a
secret (``password``, ``token``, ...).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import TextIO, final

import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["REDACTED", "SECRET_KEYS", "bind_role", "configure_logging", "redact_secrets"]

REDACTED = "<redacted>"
# Keys whose values are secrets whatever their type (a token passed as a plain str).
SECRET_KEYS = frozenset({"password", "passwd", "token", "secret", "authorization", "api_key"})
# Named like secrets but evidence operators need: the lock's fencing token orders holders.
NOT_SECRET_KEYS = frozenset({"fencing_token"})


def _redact(value: object) -> object:
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    return value


def _is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    if lowered in NOT_SECRET_KEYS:
        return False
    return lowered in SECRET_KEYS or lowered.endswith(("_password", "_token", "_secret"))


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace secret values in an event (a structlog processor).

    Redacts :class:`~pydantic.SecretStr`/``SecretBytes`` anywhere (also inside dicts and
    lists, such as a dumped settings model) and the values of keys named like secrets.
    """
    for key, value in list(event_dict.items()):
        event_dict[key] = REDACTED if _is_secret_key(key) else _redact(value)
    return event_dict


@final
class _CurrentStderr:
    """Write to whatever ``sys.stderr`` is now, not to the one seen at configure time.

    Loggers are cached on first use (``cache_logger_on_first_use``), so a logger must not
    hold on to a stream that may be replaced later (test capture, daemon re-plumbing).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    *,
    json: bool | None = None,
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the whole process (call once, from ``cli.py``).

    Args:
        json: force JSON (True) or console (False) output; None picks JSON unless the
            stream is a terminal.
        level: the lowest level logged, as ``logging.INFO`` or ``"debug"``.
        stream: where to write; stderr by default.
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        redact_secrets,
    ]
    renderer: list[Processor]
    if json:
        renderer = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=out.isatty())]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(
            file=out if stream is not None else _CurrentStderr()  # type: ignore[arg-type]  # write/flush is all PrintLogger uses
        ),
        cache_logger_on_first_use=True,
    )


def bind_role(role: str) -> None:
    """Bind ``role=<service>`` to every later event of this context."""
    structlog.contextvars.bind_contextvars(role=role)
