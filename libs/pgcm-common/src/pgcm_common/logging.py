"""Structured logging for every pgcm process (structlog, configured once in ``cli.py``).

JSON lines on stderr when stderr is not a terminal (journald, files, CI), the console
renderer when it is, as the original did. When stderr is systemd's journal
(``JOURNAL_STREAM`` names its device and inode), every line starts with its syslog
priority (``<3>`` error ... ``<7>`` debug, as sd-daemon(3) describes), so
``journalctl -p warning`` filters pgcm like any other service. Colours follow
``NO_COLOR``: any non-empty value turns them off. Event names are dotted
``<subject>.<verb>``; human text goes in ``msg=``. Secrets never reach the output:
:func:`redact_secrets` replaces any :class:`~pydantic.SecretStr` value and the value of
any key that names a secret (``password``, ``token``, ...).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO, final

import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "SECRET_KEYS",
    "SYSLOG_PRIORITIES",
    "bind_role",
    "colour_allowed",
    "configure_logging",
    "is_journal_stream",
    "redact_secrets",
]

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


# Syslog priorities of structlog's level names; journald reads a "<N>" line prefix as
# the entry's priority (sd-daemon(3)). Unknown names get info's.
SYSLOG_PRIORITIES: Mapping[str, int] = {
    "critical": 2,
    "fatal": 2,
    "error": 3,
    "exception": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_INFO_PRIORITY = 6


def colour_allowed(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Return whether output to ``stream`` may use ANSI colours.

    Only on a terminal, and never when ``NO_COLOR`` is set to a non-empty value (the
    convention every colouring tool follows).
    """
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except ValueError:  # a closed stream
        return False


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Return whether ``stream`` is connected to systemd's journal.

    systemd sets ``JOURNAL_STREAM=<device>:<inode>`` for a unit whose stdout or stderr
    goes to the journal; the variable is inherited by children whose stderr may point
    elsewhere, so the stream's own device and inode must match it.
    """
    env = os.environ if environ is None else environ
    device, sep, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor behind it (StringIO)
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


@final
class _SyslogPrefixed:
    """Wrap a renderer so each rendered line starts with its syslog priority (``<N>``)."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        # add_log_level has normalised the name ("exception" -> "error") before us.
        level = str(event_dict.get("level", method))
        rendered = self._renderer(logger, method, event_dict)
        if not isinstance(rendered, str):  # both renderers we wrap return text
            raise TypeError(f"expected rendered text, got {type(rendered).__name__}")
        return f"<{SYSLOG_PRIORITIES.get(level, _INFO_PRIORITY)}>{rendered}"


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
        stream: where to write; stderr by default. When it is the journal (see
            :func:`is_journal_stream`), lines carry their syslog priority prefix.
    """
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    journal = is_journal_stream(out)
    numeric = level if isinstance(level, int) else logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        redact_secrets,
    ]
    preprocess: list[Processor] = []
    render: Processor
    if json:
        preprocess = [structlog.processors.dict_tracebacks]
        render = structlog.processors.JSONRenderer()
    else:
        render = structlog.dev.ConsoleRenderer(colors=colour_allowed(out))
    if journal:
        render = _SyslogPrefixed(render)
    structlog.configure(
        processors=[*shared, *preprocess, render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(
            file=out if stream is not None else _CurrentStderr()  # type: ignore[arg-type]  # write/flush is all PrintLogger uses
        ),
        cache_logger_on_first_use=True,
    )


def bind_role(role: str) -> None:
    """Bind ``role=<service>`` to every later event of this context."""
    structlog.contextvars.bind_contextvars(role=role)
