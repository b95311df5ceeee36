"""Every log event, metric and setting the documentation names exists in the code.

The documentation is read as an operator reads it: backticked dotted names are log
events (unless they are a file or a Python module), ``pgcm_supervise_*`` /
``pgcm_proxy_*`` / ``pgcm_build_*`` are metrics, ``[table] key`` and ``PGCM_*`` are
settings, and each row of docs/configuration.md names a key, its environment variable
and its flag for one service.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tests.consistency.conftest import ServiceSettings

# Backticked dotted names that are not events: files (by extension) and Python modules.
_FILE_SUFFIXES: Final = frozenset(
    {
        "py",
        "ini",
        "pid",
        "signal",
        "proto",
        "json",
        "toml",
        "md",
        "xml",
        "yml",
        "yaml",
        "service",
        "conf",
        "sock",
        "template",
        "txt",
        "sh",
        "socket",
        "timer",
        "d",
    }
)
_DOTTED: Final = re.compile(r"`([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)`")
_METRIC: Final = re.compile(r"\bpgcm_(?:supervise|proxy|build)_[a-z0-9_]+\b")
_TOML_KEY: Final = re.compile(r"`(\[[a-z_]+\] [a-z_]+)`")
_ENV: Final = re.compile(r"\bPGCM_[A-Z0-9_]*[A-Z0-9]\b")
_CONFIG_ROW: Final = re.compile(
    r"^\| `(\[[a-z_]+\] [a-z_]+)` \| [^|]* \| `([A-Z0-9_]+)` \| `(--[a-z0-9-]+)` \|"
)


def _documented(documents: dict[str, str], pattern: re.Pattern[str]) -> dict[str, set[str]]:
    """Return each name ``pattern`` finds, with the documents naming it."""
    found: dict[str, set[str]] = {}
    for path, text in documents.items():
        for name in pattern.findall(text):
            found.setdefault(name, set()).add(path)
    return found


def documented_events(documents: dict[str, str]) -> dict[str, set[str]]:
    """Return each documented event name with the documents naming it."""
    return {
        name: docs
        for name, docs in _documented(documents, _DOTTED).items()
        if name.rsplit(".", 1)[1] not in _FILE_SUFFIXES and not name.startswith("pgcm_")
    }


def test_the_documents_and_the_code_are_both_read(documents: dict[str, str]) -> None:
    # Guards the extraction itself: an empty set on either side would pass vacuously.
    assert "proxy.primary.change" in documented_events(documents)
    assert "pgcm_lab.chain" not in documented_events(documents)  # a module
    assert "pgbouncer.ini" not in documented_events(documents)  # a file
    assert "pgcm_proxy_apply_errors_total" in _documented(documents, _METRIC)
    assert "[supervise] metrics_address" in _documented(documents, _TOML_KEY)


def test_code_events_are_found_where_they_are_logged(code_events: frozenset[str]) -> None:
    # Direct calls, aliases chosen at run time, and every service's events.
    assert {"daemon.fatal", "grpc.request.finish", "proxy.primary.change"} <= code_events
    assert "proxy.fatal" not in code_events


def test_every_documented_log_event_is_logged_by_the_code(
    documents: dict[str, str], code_events: frozenset[str]
) -> None:
    missing = {
        name: sorted(docs)
        for name, docs in documented_events(documents).items()
        if name not in code_events
    }
    assert missing == {}


def test_every_documented_metric_is_exported(
    documents: dict[str, str], code_metrics: frozenset[str]
) -> None:
    missing = {
        name: sorted(docs)
        for name, docs in _documented(documents, _METRIC).items()
        if name not in code_metrics
    }
    assert missing == {}


def test_every_documented_setting_key_and_environment_variable_exists(
    documents: dict[str, str],
    code_settings: dict[str, ServiceSettings],
    code_environment: frozenset[str],
) -> None:
    keys = frozenset[str]().union(*(s.toml_keys for s in code_settings.values()))
    missing_keys = {
        k: sorted(d) for k, d in _documented(documents, _TOML_KEY).items() if k not in keys
    }
    missing_env = {
        k: sorted(d) for k, d in _documented(documents, _ENV).items() if k not in code_environment
    }
    assert missing_keys == {}
    assert missing_env == {}


def test_each_configuration_row_matches_its_service(
    documents: dict[str, str], code_settings: dict[str, ServiceSettings]
) -> None:
    service: str | None = None
    wrong: list[str] = []
    rows = 0
    for line in documents["docs/configuration.md"].splitlines():
        if line.startswith("### "):
            service = line.removeprefix("### ").strip()
            continue
        row = _CONFIG_ROW.match(line)
        if row is None or service not in code_settings:
            continue
        rows += 1
        key, env, flag = row.groups()
        settings = code_settings[service]
        if key not in settings.toml_keys:
            wrong.append(f"{service}: key {key}")
        if env not in settings.environment:
            wrong.append(f"{service}: environment {env} ({key})")
        if flag not in settings.flags:
            wrong.append(f"{service}: flag {flag} ({key})")
    assert rows > 0
    assert wrong == []


def test_every_setting_of_every_service_is_documented(
    documents: dict[str, str], code_settings: dict[str, ServiceSettings]
) -> None:
    text = documents["docs/configuration.md"]
    undocumented = {
        service: sorted(k for k in settings.toml_keys if f"`{k}`" not in text)
        for service, settings in code_settings.items()
    }
    assert {s: keys for s, keys in undocumented.items() if keys} == {}
