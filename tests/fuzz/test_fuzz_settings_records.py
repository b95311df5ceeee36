"""Hostile settings (TOML and ``PGCM_*`` environment) and hostile etcd JSON records.

* ``load_settings`` of every service either returns settings or raises
  :class:`~pgcm_common.errors.ConfigError` (``InvalidSettings`` included) whose ``key``
  is set and named in the message; never another exception.
* ``from_json`` of every record either returns a record that survives a round trip or
  raises :class:`~pgcm_common.records.RecordError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from pgcm_common.errors import ConfigError
from pgcm_common.records import NodeStatus, PrimaryRecord, ProxyAck, RecordError
from pgcm_common.settings import InvalidSettings, PgcmSettings, load_settings
from pgcm_failover.settings import FailoverSettings
from pgcm_proxy.settings import ProxySettings
from pgcm_supervise.settings import SuperviseSettings

SERVICES: Final[tuple[type[PgcmSettings], ...]] = (
    ProxySettings,
    SuperviseSettings,
    FailoverSettings,
)
TABLES: Final = ("proxy", "supervise", "failover", "cluster", "etcd", "pgbouncer", "bogus")
KEYS: Final = (
    *("bind_address", "token", "tokens", "insecure", "node_name", "crm_mon_interval"),
    *("crm_mon_timeout", "status_interval", "status_lease_ttl", "node_addresses"),
    *("pause_timeout", "pause_expiry", "endpoints", "password", "username", "port", "host"),
    *("namespace", "master_key", "pgbouncer_config_file", "pgbouncer_config_template_file"),
    *("proxy_id", "retry_interval", "postgres_dsn", "tls_cert_file", "connect_timeout"),
    *("clients", "supervise_endpoints", "metrics_address", "command_prefix", "unknown_key"),
    *("etcd-endpoints", "pgbouncer-port", "pause-timeout", "user", "database", "ca_file"),
)
TEXTS: Final = (
    *("5s", "500ms", "-1s", "0s", "1h", "99999999999h", "1e400s", "nan", "inf", "", " "),
    *("127.0.0.1:8080", "0.0.0.0:1", "[::1]:0", "http://127.0.0.1:2379", "a=b,c", "**********"),
    *("/nonexistent/file", "\x00", "\n[etcd]\npassword='x'", "static", "corosync", "true"),
)

scalars = (
    st.sampled_from(TEXTS)
    | st.text(max_size=20)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.datetimes(timezones=st.just(UTC))
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
documents = st.dictionaries(
    st.sampled_from(TABLES),
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), toml_values, max_size=5) | scalars,
    max_size=4,
)
environments = st.dictionaries(
    st.sampled_from(
        (
            *(f"PGCM_{key.upper()}" for key in KEYS if "-" not in key),
            *("PGCM_ETCD__PASSWORD", "PGCM_ETCD__ENDPOINTS", "PGCM_PGBOUNCER__PORT"),
            *("PGCM_CLUSTER__NAMESPACE", "PGCM_TOKENS", "PGCM_ETCD_ENDPOINTS", "PGCM_NOPE"),
        )
    ),
    # The kernel refuses NUL in the environment: it cannot reach a daemon.
    (st.sampled_from(TEXTS) | st.text()).filter(lambda text: "\x00" not in text),
    max_size=4,
)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Replace every ``PGCM_*`` variable with ``values`` for the block (restored after)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("PGCM_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key in values:
            os.environ.pop(key, None)
        os.environ.update(saved)


def _assert_names_its_key(exc: ConfigError) -> None:
    assert exc.key, exc
    if isinstance(exc, InvalidSettings):
        assert exc.problems
        for key, problem in exc.problems:
            assert key, problem
            assert repr(key) in str(exc)  # the message quotes each key with repr()
    else:
        assert exc.key in str(exc) or exc.key == "config_file"


@given(st.sampled_from(SERVICES), documents, environments)
def test_hostile_toml_and_environment_raise_only_config_errors_naming_a_key(
    cls: type[PgcmSettings], document: dict[str, object], env: dict[str, str]
) -> None:
    with tempfile.TemporaryDirectory(prefix="pgcm-fuzz-") as tmp:
        path = Path(tmp) / "pgcm.toml"
        try:
            path.write_text(tomli_w.dumps(document))
        except (TypeError, ValueError):
            path.write_text(repr(document))  # not representable: hostile non-TOML text
        with environment(env):
            try:
                load_settings(cls, config_file=path)
            except ConfigError as exc:
                _assert_names_its_key(exc)


@given(st.sampled_from(SERVICES), st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_config_file_bytes_raise_only_config_errors(
    cls: type[PgcmSettings], content: bytes | str
) -> None:
    with tempfile.TemporaryDirectory(prefix="pgcm-fuzz-") as tmp:
        path = Path(tmp) / "pgcm.toml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, errors="surrogatepass")
        with environment({}):
            try:
                load_settings(cls, config_file=path)
            except ConfigError as exc:
                _assert_names_its_key(exc)


RecordType = type[PrimaryRecord | ProxyAck | NodeStatus]
RECORDS: Final[tuple[RecordType, ...]] = (PrimaryRecord, ProxyAck, NodeStatus)
VALID: Final[dict[RecordType, dict[str, object]]] = {
    PrimaryRecord: {
        "node": "n1",
        "address": "10.0.0.1",
        "with_quorum": True,
        "dc": "n2",
        "writer": "n2",
        "observed_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
    },
    ProxyAck: {
        "proxy_id": "p1",
        "host": "10.0.0.1",
        "revision": 7,
        "applied_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "pgbouncers": ["127.0.0.1:6432"],
    },
    NodeStatus: {
        "node": "n1",
        "address": "10.0.0.1",
        "observed_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "with_quorum": True,
        "dc": "n1",
        "primary": "n1",
        "nodes": [{"name": "n1", "online": True, "role": "Promoted", "promotion_score": 1001}],
        "pgbouncer_paused": False,
        "postgres": {"in_recovery": False, "replication": [], "oldest_transaction_age_s": 0.5},
    },
}
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.sampled_from(("2026-01-01T00:00:00Z", "not a date", "1e309", "-0"))
)
# st.deferred, not st.recursive: under 10 000 examples st.recursive's self-check warns
# (HypothesisDeprecationWarning, an error under filterwarnings=error) about this lambda.
json_values: st.SearchStrategy[object] = st.deferred(
    lambda: (
        json_leaves
        | st.lists(json_values, max_size=3)
        | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
    )
)


@st.composite
def record_documents(draw: st.DrawFn) -> tuple[type[PrimaryRecord | ProxyAck | NodeStatus], bytes]:
    """Draw a record type and a valid document of it with fields replaced or dropped."""
    cls = draw(st.sampled_from(RECORDS))
    document = dict(VALID[cls])
    for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=3)):
        if draw(st.booleans()):
            document[key] = draw(json_values)
        else:
            document.pop(key, None)
    raw = json.dumps(document).encode()
    if draw(st.integers(0, 3)) == 0:
        position = draw(st.integers(0, len(raw)))
        raw = (
            raw[:position] + draw(st.binary(max_size=6)) + raw[position + draw(st.integers(0, 6)) :]
        )
    return cls, raw


def _check_record(cls: type[PrimaryRecord | ProxyAck | NodeStatus], raw: bytes) -> None:
    try:
        record = cls.from_json(b"/fuzz/key", raw)
    except RecordError as exc:
        assert exc.key == "/fuzz/key"  # noqa: PT017 - a property: rejection is one valid outcome
        return
    assert cls.from_json(b"/fuzz/key", record.to_json()) == record


@given(record_documents())
def test_mutated_records_parse_or_raise_record_error(
    case: tuple[type[PrimaryRecord | ProxyAck | NodeStatus], bytes],
) -> None:
    _check_record(*case)


@given(
    st.sampled_from(RECORDS),
    st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_arbitrary_record_bytes_raise_only_record_errors(
    cls: type[PrimaryRecord | ProxyAck | NodeStatus], raw: bytes
) -> None:
    _check_record(cls, raw)


def test_deeply_nested_json_is_a_record_error_not_a_recursion_error() -> None:
    with_depth = b"[" * 100_000 + b"]" * 100_000
    for cls in RECORDS:
        _check_record(cls, with_depth)
