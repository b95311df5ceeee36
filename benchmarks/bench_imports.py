"""P6: what each import costs the daemons, measured in their installed Debian packages.

For pgcm-proxy and pgcm-supervise, the package is built and unpacked as
:func:`deployed.installed_command` does, and Debian's ``/usr/bin/python3`` runs the
package's venv with the unit's ``Environment=`` (``PYTHONOPTIMIZE=2``) and no bytecode
writing (the unit's file system is read-only). Each probe is a fresh interpreter that
reads its own ``/proc/self/smaps_rollup`` before and after importing:

* ``(interpreter)``: nothing imported; its figures are the interpreter's own.
* ``alone``: one top-level package imported into a bare interpreter: what it costs with
  everything it pulls in (asyncio, typing, ...), as if it were the only one.
* ``in_order``: the packages imported one after another in the order the daemon first
  reaches them: what each adds on top of the ones before, so the column adds up to the
  daemon's import set (the last row, ``pgcm_<service>.app``: the service's own code).

RSS counts every page mapped, USS only the process's private ones (what stopping the
daemon would free; a shared library's text is private while no other process maps it).
Times are the median of ``RUNS`` probes. The last row repeats the whole import set
without the unit's ``PYTHONOPTIMIZE=2``. Numbers only: nothing is asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from collections.abc import Sequence
from typing import Final

from deployed import installed_command, unit_environment

DESCRIPTION = (
    "P6: resident memory (RSS, USS) and time of each import of pgcm-proxy and "
    "pgcm-supervise, in their installed Debian packages with the units' environment "
    "(fresh interpreter per probe; alone and in the daemon's order)."
)
RUNS: Final = 3
# Top-level imports in the order each daemon first reaches them (``python -X importtime``
# of ``pgcm_<service>.cli`` then ``.app``); asyncio first because nearly all need it.
ORDER: Final = {
    "pgcm-proxy": (
        "asyncio", "tomllib", "structlog", "anyio", "pydantic", "pydantic_settings",
        "tomli_w", "h11", "aiofiles", "pgcm_common.daemon", "pgcm_proxy.cli",
        "pgcm_proxy.app",
    ),
    "pgcm-supervise": (
        "asyncio", "tomllib", "structlog", "anyio", "pydantic", "pydantic_settings",
        "tomli_w", "h11", "grpclib", "defusedxml", "betterproto2",
        "dateutil.parser", "pgcm_common.daemon", "pgcm_supervise.cli", "pgcm_supervise.app",
    ),
}  # fmt: skip
# Not imported by the daemon at steady state (prometheus_client: only with metrics
# enabled): measured alone. asyncpg is no longer installed with either daemon (ADR 0005).
OPTIONAL: Final = {
    "pgcm-proxy": ("prometheus_client",),
    "pgcm-supervise": ("prometheus_client",),
}


_PROBE: Final = """
import importlib, sys, time
def memory():
    fields = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in list(rollup)[1:]:
            name, value, *_ = line.split()
            fields[name.rstrip(":")] = int(value)
    return fields["Rss"], fields["Private_Clean"] + fields["Private_Dirty"]
rows = [["(interpreter)", *memory(), 0.0]]
for name in sys.argv[1:]:
    started = time.perf_counter()
    importlib.import_module(name)
    rows.append([name, *memory(), time.perf_counter() - started])
import json
print(json.dumps(rows))
"""


def _probe(
    service: str, names: Sequence[str], *, optimize: bool = True
) -> list[tuple[str, int, int, float]]:
    """Import ``names`` in order in a fresh interpreter; return (name, rss, uss KiB, s).

    ``optimize=False`` drops the unit's ``PYTHONOPTIMIZE``, for comparison.
    """
    python = installed_command(service)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PGCM_"))}
    env |= unit_environment(service) | {"PYTHONDONTWRITEBYTECODE": "1"}
    if not optimize:
        env.pop("PYTHONOPTIMIZE", None)
    out = subprocess.run(
        [python, "-c", _PROBE, *names], env=env, capture_output=True, text=True, check=True
    ).stdout
    return [(str(n), int(r), int(u), float(s)) for n, r, u, s in json.loads(out)]


def _mb(kib: float) -> float:
    return round(kib / 1024, 1)


def _median_probes(
    service: str, names: Sequence[str], *, optimize: bool = True
) -> list[tuple[str, float, float, float]]:
    """Return per row the median over ``RUNS`` probes of (rss, uss KiB, s)."""
    runs = [_probe(service, names, optimize=optimize) for _ in range(RUNS)]
    return [
        (
            runs[0][i][0],
            statistics.median(run[i][1] for run in runs),
            statistics.median(run[i][2] for run in runs),
            statistics.median(run[i][3] for run in runs),
        )
        for i in range(len(runs[0]))
    ]


def measure(service: str) -> dict[str, object]:
    """Return the table of one service: a row per import, the interpreter first."""
    table: dict[str, object] = {}
    ordered = _median_probes(service, ORDER[service])
    base_name, base_rss, base_uss, _ = ordered[0]
    table[base_name] = {"rss_mb": _mb(base_rss), "uss_mb": _mb(base_uss)}
    previous = ordered[0]
    for name in (*ORDER[service], *OPTIONAL[service]):
        _, rss0, uss0, _ = (alone := _median_probes(service, [name]))[0]
        _, rss1, uss1, seconds = alone[1]
        row: dict[str, object] = {
            "alone_rss_mb": _mb(rss1 - rss0),
            "alone_uss_mb": _mb(uss1 - uss0),
            "alone_ms": round(seconds * 1000),
        }
        step = next((r for r in ordered if r[0] == name), None)
        if step is not None:
            row |= {
                "in_order_rss_mb": _mb(step[1] - previous[1]),
                "in_order_uss_mb": _mb(step[2] - previous[2]),
                "in_order_ms": round(step[3] * 1000),
            }
            previous = step
        table[name] = row
    last = ordered[-1]
    table["all (daemon's import set)"] = {
        "rss_mb": _mb(last[1]),
        "uss_mb": _mb(last[2]),
        "ms": round(sum(r[3] for r in ordered) * 1000),
    }
    # The unit's -OO finds no optimized bytecode of Debian's standard library (Debian
    # compiles only the plain one, and the sandbox cannot write any): every start
    # compiles it from source. The same import set without -OO shows that cost.
    plain = _median_probes(service, ORDER[service], optimize=False)
    table["all, without PYTHONOPTIMIZE"] = {
        "rss_mb": _mb(plain[-1][1]),
        "uss_mb": _mb(plain[-1][2]),
        "ms": round(sum(r[3] for r in plain) * 1000),
    }
    return table


def run() -> dict[str, object]:
    """Measure both daemons' imports; return ``{"<service>: <import>": row}``."""
    results: dict[str, object] = {}
    for service in ORDER:
        for name, row in measure(service).items():
            results[f"{service}: {name}"] = row
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
