from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from pgcm_common.logging import (
    REDACTED,
    colour_allowed,
    configure_logging,
    is_journal_stream,
    redact_secrets,
)


def test_events_keep_dotted_names_and_bound_context() -> None:
    configure_logging(json=True, stream=io.StringIO())
    log = structlog.get_logger().bind(component="pgbouncer")
    with capture_logs() as logs:
        log.info("clients.pgbouncer.pause", endpoint="n1:8080", msg="pausing")
    assert logs == [
        {
            "event": "clients.pgbouncer.pause",
            "component": "pgbouncer",
            "endpoint": "n1:8080",
            "msg": "pausing",
            "log_level": "info",
        }
    ]


def test_json_output_has_ts_level_and_redacted_secrets() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(role="proxy")
    try:
        structlog.get_logger().info(
            "config.loaded",
            password="pw",  # noqa: S106 - a fake secret that must not be printed
            settings={"etcd": {"password": SecretStr("s3")}, "token": "t0k"},
            dsn=SecretStr("postgres://secret"),
        )
        structlog.get_logger().debug("hidden.event")
    finally:
        structlog.contextvars.clear_contextvars()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1  # debug is filtered at the default info level
    event = json.loads(lines[0])
    assert event["event"] == "config.loaded"
    assert event["level"] == "info"
    assert event["role"] == "proxy"
    assert event["ts"].endswith("Z")
    assert event["password"] == REDACTED
    assert event["dsn"] == REDACTED
    assert event["settings"] == {"etcd": {"password": REDACTED}, "token": REDACTED}
    for secret in ("pw", "s3", "t0k", "postgres://secret"):
        assert secret not in out.getvalue()


def _boom() -> None:
    raise RuntimeError("boom")


def test_exceptions_render_as_structured_tracebacks() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    try:
        _boom()
    except RuntimeError:
        structlog.get_logger().exception("operation.error")
    event = json.loads(out.getvalue())
    assert event["exception"][0]["exc_type"] == "RuntimeError"
    assert event["exception"][0]["exc_value"] == "boom"


def test_console_renderer_is_used_when_json_is_off() -> None:
    out = io.StringIO()
    configure_logging(json=False, stream=out, level="debug")
    structlog.get_logger().debug("etcd.lock.acquire", token=SecretStr("x"))
    text = out.getvalue()
    assert "etcd.lock.acquire" in text
    assert not text.startswith("{")
    assert REDACTED in text


def test_auto_mode_picks_json_off_a_terminal() -> None:
    out = io.StringIO()  # isatty() is False, like a pipe or journald
    configure_logging(stream=out)
    structlog.get_logger().info("x.y")
    assert json.loads(out.getvalue())["event"] == "x.y"


def test_redact_secrets_leaves_ordinary_values_alone() -> None:
    event = {"event": "a.b", "host": "10.0.0.1", "items": [SecretStr("z"), 1]}
    assert redact_secrets(None, "info", event) == {
        "event": "a.b",
        "host": "10.0.0.1",
        "items": [REDACTED, 1],
    }


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (colours are only used on one)."""

    def isatty(self) -> bool:
        return True


def _journal_env(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def _log_through_pipe(
    monkeypatch: pytest.MonkeyPatch, journal: Callable[[int], str | None]
) -> list[str]:
    """Log one event per level into a pipe; ``journal(write_fd)`` gives JOURNAL_STREAM."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "r") as reader, os.fdopen(write_fd, "w") as writer:
        value = journal(write_fd)
        if value is None:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        else:
            monkeypatch.setenv("JOURNAL_STREAM", value)
        configure_logging(stream=writer, level="debug")
        log = structlog.get_logger()
        log.debug("a.debug")
        log.info("a.info")
        log.warning("a.warning")
        log.error("a.error")
        try:
            _boom()
        except RuntimeError:
            log.exception("a.exception")
        log.critical("a.critical")
        writer.close()
        return reader.read().splitlines()


def test_lines_to_the_journal_carry_their_syslog_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = _log_through_pipe(monkeypatch, _journal_env)
    prefixes = [line[: line.index("{")] for line in lines]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<3>", "<2>"]
    events = [json.loads(line[line.index("{") :])["event"] for line in lines]
    assert events == ["a.debug", "a.info", "a.warning", "a.error", "a.exception", "a.critical"]


def test_no_priority_prefix_when_journal_stream_names_another_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A child of a journald-logged unit inherits JOURNAL_STREAM with stderr redirected.
    other = tmp_path / "other"
    other.touch()
    elsewhere = f"{other.stat().st_dev}:{other.stat().st_ino}"
    for journal in (elsewhere, "not:a-number", "12345", None):

        def fixed(_fd: int, value: str | None = journal) -> str | None:
            return value

        lines = _log_through_pipe(monkeypatch, fixed)
        assert len(lines) == 6
        assert all(line.startswith("{") for line in lines), journal


def test_is_journal_stream_compares_device_and_inode() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "r") as reader, os.fdopen(write_fd, "w") as writer:
        env = {"JOURNAL_STREAM": _journal_env(write_fd)}
        assert is_journal_stream(writer, env)
        # The read end is the same pipe object: same device and inode.
        assert is_journal_stream(reader, env)
        assert not is_journal_stream(io.StringIO(), env)
        assert not is_journal_stream(writer, {})
        st = os.fstat(write_fd)
        assert not is_journal_stream(writer, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})


def test_console_colours_on_a_terminal_unless_no_color_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = _Terminal()
    configure_logging(stream=coloured)
    structlog.get_logger().warning("x.coloured")
    assert "\x1b[" in coloured.getvalue()

    monkeypatch.setenv("NO_COLOR", "1")
    plain = _Terminal()
    configure_logging(stream=plain)
    structlog.get_logger().warning("x.plain")
    assert "x.plain" in plain.getvalue()
    assert "\x1b[" not in plain.getvalue()


def test_colour_allowed_follows_no_color_and_the_terminal() -> None:
    assert colour_allowed(_Terminal(), {})
    assert colour_allowed(_Terminal(), {"NO_COLOR": ""})  # empty means unset
    assert not colour_allowed(_Terminal(), {"NO_COLOR": "1"})
    assert not colour_allowed(io.StringIO(), {})
