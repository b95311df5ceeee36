from __future__ import annotations

import io
import json

import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from pgcm_common.logging import REDACTED, configure_logging, redact_secrets


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
