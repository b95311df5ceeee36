"""Fixtures: what the code defines, read from the code itself (events, metrics, settings).

The consistency tests compare these with what the documentation and the shipped
monitoring assets name, so a rename in one place fails until every place follows.

* Log events: an AST walk of every ``src`` tree for calls of a logger method (``info``,
  ``warning``, ...) or of a local alias of one (``finish = log.info``) whose first
  argument is a literal dotted event name.
* Metrics: the registries of the real metric classes, every family and every sample
  name (``_total``, ``_bucket``, ``_info``, ...), as a scrape would show them.
* Settings: the pydantic settings models' fields (``[table] key``, ``PGCM_*``) and the
  services' argument parsers (flags).
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from pydantic import BaseModel

from pgcm_common.settings.original import ORIGINAL_KEYS, original_env_name

ROOT: Final = Path(__file__).parents[2]
SOURCE_TREES: Final = (*sorted(ROOT.glob("services/*/src")), *sorted(ROOT.glob("libs/*/src")))
DOCS: Final = (
    ROOT / "README.md",
    *sorted(ROOT.glob("services/*/README.md")),
    *sorted(ROOT.glob("libs/*/README.md")),
    *sorted(ROOT.glob("deploy/*/README.md")),
    *sorted(ROOT.glob("docs/*.md")),
)
_LOG_METHODS: Final = frozenset(
    {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "msg"}
)
EVENT_NAME: Final = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")


def _python_files(*trees: Path) -> Iterator[Path]:
    for tree in trees:
        yield from sorted(tree.rglob("*.py"))


def _first_literal(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    return None


def log_events() -> frozenset[str]:
    """Return every event name a log call in the code can emit."""
    events: set[str] = set()
    for path in _python_files(*SOURCE_TREES):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            event = _first_literal(node)
            if event is None or not EVENT_NAME.fullmatch(event):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _LOG_METHODS:
                events.add(event)
            elif isinstance(func, ast.Name):
                # An alias chosen at run time: `finish = log.info if ok else log.warning`.
                events.add(event)
    return frozenset(events)


def metric_names() -> frozenset[str]:
    """Return every metric family and sample name the two daemons can export."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - test-only import

    from pgcm_proxy.metrics import ProxyMetrics  # noqa: PLC0415
    from pgcm_supervise.grpc_serve import RpcMetrics  # noqa: PLC0415
    from pgcm_supervise.metrics import SuperviseMetrics  # noqa: PLC0415

    supervise = CollectorRegistry()
    SuperviseMetrics(supervise)
    RpcMetrics(supervise)
    registries = (supervise, ProxyMetrics().registry)
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.add(family.name)
            names.update(_sample_names(family.name, family.type))
            names.update(sample.name for sample in family.samples)
    return frozenset(names)


def _sample_names(name: str, kind: str) -> tuple[str, ...]:
    # Series a family has once it holds data (a labelled family holds none until used).
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    return tuple(name + suffix for suffix in suffixes.get(kind, ()))


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """The settings one service reads, as the documentation spells them."""

    toml_keys: frozenset[str]  # "[etcd] endpoints", "[proxy] poll_interval"
    environment: frozenset[str]  # "PGCM_ETCD__ENDPOINTS", "PGCM_POLL_INTERVAL"
    flags: frozenset[str]  # every option string of the service's parser


def _leaves(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaves(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def _option_strings(parser: argparse.ArgumentParser) -> Iterator[str]:
    # argparse has no public listing of its options.
    for action in parser._actions:
        yield from action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _option_strings(sub)


def service_settings() -> dict[str, ServiceSettings]:
    """Return each service's settings, keyed by its program name."""
    from pgcm_common.settings import PgcmSettings  # noqa: PLC0415
    from pgcm_failover.cli import build_parser as failover_parser  # noqa: PLC0415
    from pgcm_failover.settings import FailoverSettings  # noqa: PLC0415
    from pgcm_proxy.cli import DAEMON as PROXY_DAEMON  # noqa: PLC0415
    from pgcm_proxy.settings import ProxySettings  # noqa: PLC0415
    from pgcm_supervise.cli import DAEMON as SUPERVISE_DAEMON  # noqa: PLC0415
    from pgcm_supervise.settings import SuperviseSettings  # noqa: PLC0415

    services: dict[str, tuple[type[PgcmSettings], argparse.ArgumentParser]] = {
        "pgcm-proxy": (ProxySettings, PROXY_DAEMON.build_parser()),
        "pgcm-supervise": (SuperviseSettings, SUPERVISE_DAEMON.build_parser()),
        "pgcm-failover": (FailoverSettings, failover_parser()),
    }
    result: dict[str, ServiceSettings] = {}
    for program, (model, parser) in services.items():
        paths = list(_leaves(model))
        toml = {
            f"[{p.split('.')[0]}] {p.split('.', 1)[1]}" if "." in p else f"[{model.section}] {p}"
            for p in paths
        }
        env = {"PGCM_" + p.replace(".", "__").upper() for p in paths}
        # The original's names: PGCM_ + its flag name, "_" for "-".
        env |= {"PGCM_" + key.upper().replace("-", "_") for key in model.original_keys}
        result[program] = ServiceSettings(
            frozenset(toml), frozenset(env), frozenset(_option_strings(parser))
        )
    return result


def environment_names_in_code() -> frozenset[str]:
    """Return every ``PGCM_*`` literal in the code, tests and scripts (besides settings).

    This directory is left out: a name these tests mention must not vouch for itself.
    """
    found: set[str] = set()
    trees = (*SOURCE_TREES, ROOT / "tests", ROOT / "benchmarks", *ROOT.glob("*/*/tests"))
    files = [*_python_files(*trees), ROOT / "noxfile.py", *sorted((ROOT / "scripts").iterdir())]
    here = Path(__file__).parent
    for path in files:
        if path.is_file() and here not in path.parents:
            found.update(re.findall(r"\bPGCM_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")))
    return frozenset(found)


@pytest.fixture(scope="session")
def code_events() -> frozenset[str]:
    """Every log event name in the code."""
    return log_events()


@pytest.fixture(scope="session")
def code_metrics() -> frozenset[str]:
    """Every metric family and series name the daemons export."""
    return metric_names()


@pytest.fixture(scope="session")
def code_settings() -> dict[str, ServiceSettings]:
    """Each service's settings."""
    return service_settings()


@pytest.fixture(scope="session")
def code_environment() -> frozenset[str]:
    """Every PGCM_* name any service reads or the code mentions."""
    settings = service_settings()
    # The original's own variables (PGCM_ + its dashed key) are read too, dead ones included.
    original = {original_env_name(key.name) for key in ORIGINAL_KEYS}
    return environment_names_in_code().union(original, *(s.environment for s in settings.values()))


@pytest.fixture(scope="session")
def documents() -> dict[str, str]:
    """The text of every operator-facing document, by path from the repository root."""
    return {doc.relative_to(ROOT).as_posix(): doc.read_text() for doc in DOCS}
