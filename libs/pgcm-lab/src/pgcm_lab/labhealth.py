# ruff: noqa: ASYNC110  # we poll other processes' state: there is no event to await
"""The lab's health: Pacemaker's view, replication, and what ``pgcm-lab status`` shows."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence

import anyio

from pgcm_lab.crm import ClusterView, parse_crm_mon
from pgcm_lab.errors import LabError, LabNotUp
from pgcm_lab.labcore import (
    BRIDGE_NS,
    POLL,
    LabCore,
)
from pgcm_lab.probe import NO_ANSWER, bounded
from pgcm_lab.topology import APP_NODE

__all__ = ["LabHealth", "status_role"]


class LabHealth(LabCore):
    """Read the cluster's state: crm_mon, replication, health, the status summary."""

    async def crm_mon_xml(self, name: str | None = None) -> str:
        """``crm_mon -1 --output-as=xml`` as seen from node ``name`` (or any live node)."""
        names = [name] if name else [n for n in self.running_nodes() if n != APP_NODE]
        if not names:
            raise LabNotUp("the lab")
        last: Exception | None = None
        for candidate in names:
            try:
                argv = ["crm_mon", "-1", "--output-as=xml"]
                return (await self.exec(candidate, argv)).stdout
            except LabError as exc:
                last = exc
        raise LabError(f"no node answered crm_mon: {last}")

    async def view(self, name: str | None = None) -> ClusterView:
        """The parsed cluster view from node ``name`` (or the first live node)."""
        return parse_crm_mon(await self.crm_mon_xml(name), self.topology.resource)

    async def replication(self, primary: str) -> dict[str, tuple[str, str]]:
        """``application_name -> (state, sync_state)`` from the primary's pg_stat_replication."""
        rows = await self.psql(
            primary, "select application_name, state, sync_state from pg_stat_replication"
        )
        out: dict[str, tuple[str, str]] = {}
        for row in rows.splitlines():
            app, state, sync = row.split("|")
            out[app] = (state, sync)
        return out

    async def healthy(self, expect: Sequence[str] | None = None) -> str | None:
        """Return the primary when the cluster is healthy, else None (see :meth:`health`)."""
        primary, _ = await self.health(expect)
        return primary

    async def health(self, expect: Sequence[str] | None = None) -> tuple[str | None, str]:
        """Return ``(primary, "")`` when the cluster is healthy, else ``(None, why not)``.

        Healthy: every expected node online with quorum, exactly one promoted node,
        among them, which accepts writes, every other expected node streaming from it
        (one ``sync``), and no negative promotion score (otherwise a later failure
        promotes nobody).
        """
        wanted = list(expect or [n.name for n in self.topology.nodes])
        try:
            view = await self.view(wanted[0] if self.init_pid(wanted[0]) else None)
        except LabError as exc:
            return None, f"no cluster view: {exc}"
        primary, why = _view_health(view, wanted, scores=not self.topology.legacy)
        if primary is None:
            return None, why
        why = await self._postgres_health(primary, [n for n in wanted if n != primary])
        return (None, why) if why else (primary, "")

    async def _postgres_health(self, primary: str, standbys: Sequence[str]) -> str:
        """PostgreSQL's part of :meth:`health`: "" or why it is not healthy."""
        try:
            if await self.psql(primary, "select pg_is_in_recovery()", check=False) != "f":
                return f"{primary} does not accept writes"
            repl = await self.replication(primary)
        except (LabError, ValueError) as exc:
            return f"{primary} cannot be asked: {exc}"
        if lagging := {n: repl.get(n, ("absent", ""))[0] for n in standbys
                       if repl.get(n, ("", ""))[0] != "streaming"}:  # fmt: skip
            return f"standbys not streaming from {primary}: {lagging}"
        syncs = [n for n in standbys if repl[n][1] == "sync"]
        if standbys and len(syncs) != 1:
            return f"{len(syncs)} synchronous standbys instead of 1: {repl}"
        return ""

    async def wait_healthy(
        self, expect: Sequence[str] | None = None, *, clean_up_after: float | None = None
    ) -> str:
        """Wait (caller bounds it) until :meth:`healthy`; return the primary.

        Each new reason the cluster is not healthy is reported on the progress line, so
        a wait that runs out says what it waited for.

        ``clean_up_after``: once this many seconds passed, clean up (once) the instance
        of every expected node that is online but runs no instance. Pacemaker keeps an
        instance stopped once it failed ``migration-threshold`` times, and a crash can
        get there without any fault of the node: PAF refuses to promote a standby that
        has less WAL than another ("is the best candidate to promote, aborting"), and
        Pacemaker may ask it again until that limit. An operator cleans up then; so do
        the tests that wait for a cluster to recover.
        """
        wanted = list(expect or [n.name for n in self.topology.nodes])
        started = anyio.current_time()
        cleaned = clean_up_after is None
        last = ""
        while True:
            primary, why = await self.health(wanted)
            if primary is not None:
                return primary
            if why != last:
                self.progress(f"not healthy yet: {why}")
                last = why
            if not cleaned and anyio.current_time() - started >= (clean_up_after or 0.0):
                cleaned = await self._clean_up_stopped(wanted)
            await anyio.sleep(POLL)

    async def _clean_up_stopped(self, wanted: Sequence[str]) -> bool:
        """Clean up the instance of each online expected node that runs none.

        Returns whether the view could be read (then this is done).
        """
        try:
            view = await self.view()
        except LabError:
            return False
        running = {*view.promoted, *view.unpromoted}
        for name in sorted(set(wanted) & view.online - running):
            self.progress(f"{name} runs no instance: crm_resource --cleanup on it")
            await self.exec(name, ["crm_resource", "--cleanup", "--resource", self.clone, "--node",
                                   name], check=False)  # fmt: skip
        return True

    async def primary(self) -> str | None:
        """The promoted node as the first live node sees it."""
        return (await self.view()).primary

    async def wait_etcd_healthy(self) -> None:
        """Wait until every etcd member answers ``endpoint health``."""
        for node in self.topology.nodes:
            while not await self._etcd_ok(node.name):
                await anyio.sleep(POLL)

    async def _etcd_ok(self, name: str) -> bool:
        argv = ["etcdctl", "--endpoints=http://127.0.0.1:2379", "--command-timeout=2s",
                "endpoint", "health"]  # fmt: skip
        result = await self.exec(name, argv, check=False, env={"ETCDCTL_API": "3"})
        return result.returncode == 0

    async def _bouncer_ok(self, name: str) -> bool:
        argv = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres", "-d",
                "pgbouncer", "-qAt", "-c", "SHOW VERSION"]  # fmt: skip
        result = await self.exec(name, argv, user="postgres", check=False)
        return result.returncode == 0

    async def wait_bouncers(self) -> None:
        """Wait until every PgBouncer's admin console answers."""
        for node in self.topology.all_nodes:
            while not await self._bouncer_ok(node.name):
                await anyio.sleep(POLL)

    async def crm_mon_text(self) -> str:
        """``crm_mon -1 -rf`` (inactive resources and fail counts) from any live node."""
        for name in (n for n in self.running_nodes() if n != APP_NODE):
            result = await self.exec(name, ["crm_mon", "-1", "-rf"], check=False)
            if result.returncode == 0:
                return result.stdout
        return "(no node answered crm_mon)"

    async def partitioned(self, name: str) -> bool:
        """Whether node ``name``'s bridge port is down."""
        node = self.topology.node(name)
        out = await self.run(["ip", "-n", BRIDGE_NS, "-o", "link", "show", f"v{node.name}"])
        flags = out.stdout.split("<", 1)[1].split(">", 1)[0].split(",")
        return "UP" not in flags

    async def status(self) -> dict[str, object]:
        """Everything ``pgcm-lab status`` shows, as a JSON-ready dict.

        Every probe is bounded (:func:`pgcm_lab.probe.bounded`): a frozen component shows
        as ``"no answer"`` and is listed under ``no_answer``, never hangs the status.
        """
        running = self.running_nodes()
        silent: list[str] = []
        nodes: list[dict[str, object]] = []
        view: ClusterView | None = None
        if [n for n in running if n != APP_NODE]:
            with contextlib.suppress(LabError):
                got = await bounded(self.view)
                view = None if got == NO_ANSWER else got
                if got == NO_ANSWER:
                    silent.append("crm_mon")
        repl: dict[str, tuple[str, str]] = {}
        if view is not None and view.primary is not None:
            primary = view.primary
            with contextlib.suppress(LabError, ValueError):
                got_repl = await bounded(functools.partial(self.replication, primary))
                if got_repl == NO_ANSWER:
                    silent.append(f"postgresql on {primary}")
                else:
                    repl = got_repl
        for node in self.topology.all_nodes:
            up = node.name in running
            entry: dict[str, object] = {"name": node.name, "address": str(node.address),
                                        "running": up}  # fmt: skip
            if up and not node.is_app:
                entry["etcd"] = await bounded(functools.partial(self._etcd_ok, node.name))
            if up:
                entry["pgbouncer"] = await bounded(functools.partial(self._bouncer_ok, node.name))
            silent += [f"{part} on {node.name}" for part in ("etcd", "pgbouncer")
                       if entry.get(part) == NO_ANSWER]  # fmt: skip
            if not node.is_app:
                entry["online"] = view is not None and node.name in view.online
                entry["score"] = view.scores.get(node.name) if view else None
                entry["role"] = status_role(node.name, view, repl, up=up)
            nodes.append(entry)
        return {
            "state_dir": str(self.state_dir),
            "up": bool(running),
            "primary": view.primary if view else None,
            "quorum": view.quorum if view else False,
            "dc": view.dc if view else None,
            "nodes": nodes,
            "no_answer": silent,
        }


def status_role(
    name: str, view: ClusterView | None, repl: Mapping[str, tuple[str, str]], *, up: bool
) -> str:
    """The role ``pgcm-lab status`` shows for node ``name``.

    ``repl`` maps standbys to their (state, sync_state) in the primary's
    pg_stat_replication; ``up`` says whether the node's namespaces run.
    """
    if not up:
        return "down"
    if view is None:
        return "unknown"
    if name == view.primary:
        return "primary"
    if name in view.failed:
        return "failed"
    if name in repl:
        state, sync = repl[name]
        return sync if state == "streaming" else state
    return "standby" if name in view.unpromoted else "stopped"


def _view_health(
    view: ClusterView, wanted: Sequence[str], *, scores: bool = True
) -> tuple[str | None, str]:
    """Pacemaker's part of :meth:`Lab.health`: ``(primary, "")`` or ``(None, why not)``.

    ``scores``: require no negative promotion score (PAF). The legacy agent gives its
    asynchronous standby ``-INFINITY`` on purpose (only the sync standby may be
    promoted), so with it the streaming check of :meth:`Lab.health` is what counts.
    """
    primary = view.primary
    problems = {
        "no quorum": not view.quorum,
        f"not online: {', '.join(sorted(set(wanted) - view.online))}": not set(wanted)
        <= view.online,
        "no promoted node": primary is None,
        # A partitioned primary still answers through its own namespace, and its
        # standbys' streams take a while to time out: only the expected nodes count.
        f"the promoted node {primary} is not one of {', '.join(wanted)}": primary is not None
        and primary not in wanted,
        f"negative or missing promotion scores: "
        f"{ {n: view.scores.get(n) for n in wanted if view.scores.get(n, -1) < 0} }": scores
        and any(view.scores.get(n, -1) < 0 for n in wanted),
    }
    why = next((text for text, bad in problems.items() if bad), "")
    return (None, why) if why else (primary, "")
