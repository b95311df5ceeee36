"""P5: PAUSE/RESUME fan-out to 1, 10 and 50 PgBouncers on loopback, through pgcm_common.

Starts one PostgreSQL and 50 PgBouncer processes routing to it (the test kit's
``start_postgres``/``start_pgbouncer``), then for each fan-out width runs ``ROUNDS``
rounds of "PAUSE every PgBouncer at once" and "RESUME every PgBouncer at once" with
:class:`~pgcm_common.pgbouncer.PgBouncerAdmin` in one task group (as supervise and the
failover CLI fan out). A fresh admin connection per command, as in production. The
PgBouncers are idle (no client transactions): this is the cost of the fan-out itself.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import anyio

from pgcm_common.pgbouncer import PgBouncerAdmin
from pgcm_testkit.pgbouncer import backend_connstr, start_pgbouncer
from pgcm_testkit.postgres import start_postgres
from pgcm_testkit.process import free_tcp_port, make_world_traversable

DESCRIPTION = (
    "P5: PAUSE-all / RESUME-all fan-out to 1, 10, 50 idle PgBouncers on loopback "
    "(pgcm_common.pgbouncer, one task group, new admin connection per command)."
)
WIDTHS = (1, 10, 50)
ROUNDS = 20


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _all(admins: list[PgBouncerAdmin], op: str) -> float:
    started = time.perf_counter()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for admin in admins:
                tg.start_soon(getattr(admin, op))
    return (time.perf_counter() - started) * 1000


async def _measure(admins: list[PgBouncerAdmin]) -> dict[str, object]:
    results: dict[str, object] = {"rounds": ROUNDS}
    for width in WIDTHS:
        subset = admins[:width]
        pause_ms: list[float] = []
        resume_ms: list[float] = []
        for _ in range(ROUNDS):
            pause_ms.append(await _all(subset, "pause"))
            resume_ms.append(await _all(subset, "resume"))
        for name, values in (("pause", pause_ms), ("resume", resume_ms)):
            results[f"{name}_all_{width}_p50_ms"] = round(statistics.median(values), 2)
            results[f"{name}_all_{width}_p99_ms"] = round(_percentile(values, 0.99), 2)
    for name in ("pause", "resume"):
        one = results[f"{name}_all_1_p50_ms"]
        fifty = results[f"{name}_all_50_p50_ms"]
        assert isinstance(one, float)
        assert isinstance(fifty, float)
        results[f"{name}_growth_50_vs_1"] = round(fifty / one, 1)
    return results


def run() -> dict[str, object]:
    """Start PostgreSQL and 50 PgBouncers, measure, stop everything; return the numbers."""
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgcm-bench-fanout-")))
        make_world_traversable(base)
        postgres = stack.enter_context(start_postgres(base / "pg", port=free_tcp_port()))
        bouncers = []
        for i in range(max(WIDTHS)):
            (base / f"pgb{i}").mkdir()
            bouncers.append(
                stack.enter_context(
                    start_pgbouncer(base / f"pgb{i}", databases={"app": backend_connstr(postgres)})
                )
            )
        admins = [PgBouncerAdmin(b.admin_settings()) for b in bouncers]
        return anyio.run(_measure, admins)
