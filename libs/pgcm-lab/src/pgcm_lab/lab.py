# ruff: noqa: ASYNC110  # we poll other processes' state: there is no event to await
"""The lab driver: bring a real N-node cluster up in namespaces, break it, mend it, end it.

:class:`Lab` is the last of a stack of layers, each in its own module: the core
(:mod:`pgcm_lab.labcore`), health, tear-down, start-up, faults, and here rejoining an
ex-primary as a standby.

Every node is a network namespace ``pgcmlab-nK`` (plus ``pgcmlab-app``) joined to a bridge
in its own namespace ``pgcmlab-br``, and a mount/UTS/PID namespace whose PID 1 is
:mod:`pgcm_lab.init`. Nothing is added to the host's network, Pacemaker, Corosync or
PostgreSQL state. ``down`` kills each node's init by PID (which ends every process in the
node), deletes the namespaces, and removes ``/run/netns`` and ``/run/mount`` only when
the lab created them.
"""

from __future__ import annotations

import shutil
from typing import Final, final

import anyio

from pgcm_lab.errors import LabError, LabNotUp
from pgcm_lab.labcore import (
    BRIDGE_NS,
    DEFAULT_STATE_DIR,
    POLL,
    Progress,
    Service,
    SwitchoverResult,
    chown_to,
)
from pgcm_lab.labdown import lab_leftovers, node_pids
from pgcm_lab.labfaults import LabFaults
from pgcm_lab.labhealth import status_role
from pgcm_lab.legacy import PGSQL_LOCK
from pgcm_lab.render import LEGACY_TMPDIR
from pgcm_lab.topology import PG_BINDIR, PGDATA, Node

__all__ = [
    "BRIDGE_NS",
    "DEFAULT_STATE_DIR",
    "Lab",
    "Progress",
    "Service",
    "SwitchoverResult",
    "lab_leftovers",
    "node_pids",
    "postmaster_pids",
    "status_role",
]

_LOCK: Final = f"{LEGACY_TMPDIR}/{PGSQL_LOCK}"
_REJOIN_S: Final = 75.0  # after a rebuild: back to healthy, one more cleanup included
_REJOIN_CLEANUP_S: Final = 45.0


@final
class Lab(LabFaults):
    """Drive one lab whose state lives in ``state_dir``: every layer, plus rejoining.

    Cancellation: every method bounds its waits with ``anyio.fail_after``; a cancelled
    ``up`` leaves a half-built lab that ``down`` (or the next ``up``) removes.
    """

    async def readmit_legacy_standbys(self) -> list[str]:
        """Legacy agent: let each ex-primary the agent keeps stopped start as a standby.

        The ``ocf:heartbeat:pgsql`` agent leaves ``PGSQL.lock`` behind when a primary
        stops (also after a clean switchover) and refuses to start that node until an
        operator removes it. For every online node that runs no instance and has the
        lock, this does what that operator does: remove the file and clean the instance
        up so Pacemaker starts it again (it then follows the new primary). Returns the
        nodes readmitted; nothing with PAF.
        """
        if not self.topology.legacy:
            return []
        view = await self.view()
        running = {*view.promoted, *view.unpromoted}
        readmitted: list[str] = []
        for name in sorted(view.online - running):
            lock = self.host_path(name, _LOCK)
            if not lock.exists():
                continue
            self.progress(f"{name}: removing the legacy agent's {PGSQL_LOCK}, cleaning up")
            lock.unlink()
            await self.exec(name, ["crm_resource", "--cleanup", "--resource", self.clone,
                                   "--node", name], check=False)  # fmt: skip
            readmitted.append(name)
        return readmitted

    async def rejoin(self, name: str) -> str:
        """Bring an ex-primary (crashed, partitioned or diverged) back as a standby.

        Ban it, heal/start it when needed, pg_rewind from the primary (falling back to
        pg_basebackup), add standby.signal, clear the ban, clean up and wait for health.
        Returns the method used: ``pg_rewind`` or ``pg_basebackup``.
        """
        name = self.topology.node(name).name
        others = [n.name for n in self.topology.others(name) if self.init_pid(n.name)]
        if not others:
            raise LabNotUp("every other node")
        with anyio.fail_after(60):
            primary = None
            while primary is None or primary == name:
                primary = (await self.view(others[0])).primary
                await anyio.sleep(POLL) if primary in {None, name} else None
        self.progress(f"rejoin {name}: ban it, then rebuild it from {primary}")
        await self._ban(name, primary)
        if await self.partitioned(name):
            await self.heal(name)
        powered_off = self.init_pid(name) is None
        if not powered_off:
            try:
                await self._until_kept_stopped(name, primary)
            except LabError:
                # A stop that fails (the postmaster Pacemaker lost track of) gets the
                # node fenced meanwhile: then rebuild it powered off, as below.
                if self.init_pid(name) is not None:
                    raise
                powered_off = True
                self.progress(f"{name} was fenced while it rejoined")
        if powered_off:
            # Fenced or crashed: rebuild it before its Pacemaker starts. Probed as it was
            # left, a crashed primary's data directory reads as a failed primary, whose
            # demote fails, and the cluster fences the node again.
            self.host_path(name, f"{PGDATA}/postmaster.pid").unlink(missing_ok=True)
            self.host_path(name, "/run/pgbouncer/pgbouncer.pid").unlink(missing_ok=True)
            await self._start_init(name)
        method = await self._rebuild(name, self.topology.node(primary))
        self._mark_standby(name)
        if powered_off:
            await self._start_node_stack(name)
        await self._unban(name, primary)
        if why := await self._wait_rejoined(name, primary):
            method = await self._rebuild_fully(name, primary, why)
        self.progress(f"{name} streams again ({method})")
        return method

    async def _rebuild_fully(self, name: str, primary: str, why: str) -> str:
        """Rewound, yet not streaming: stop it, copy the primary whole, wait again.

        A fault-suite run saw a rewound node stay in walsender "startup" after a
        promotion PAF had first refused; a full copy from the primary always can.

        Raises:
            LabError: not healthy after that either; names why, with crm_mon's view.
        """
        tail = self._postgres_log_tail(name)
        self.progress(f"{name} has not rejoined ({why}); its PostgreSQL log ends:\n{tail}\n"
                      "rebuilding it with pg_basebackup")  # fmt: skip
        await self._ban(name, primary)
        await self._until_kept_stopped(name, primary)
        await self._rebuild(name, self.topology.node(primary), full=True)
        self._mark_standby(name)
        await self._unban(name, primary)
        if why := await self._wait_rejoined(name, primary):
            raise LabError(
                f"{name} did not rejoin after a full rebuild ({why}); crm_mon:\n"
                f"{await self.crm_mon_text()}"
            )
        return "pg_basebackup"

    async def _ban(self, name: str, primary: str) -> None:
        await self.exec(primary, ["crm_resource", "--resource", self.clone, "--ban", "--node", name,
                                  "--lifetime", "PT10M"])  # fmt: skip

    async def _unban(self, name: str, primary: str) -> None:
        await self.exec(primary, ["crm_resource", "--resource", self.clone, "--clear", "--node",
                                  name])  # fmt: skip
        await self.exec(primary, ["crm_resource", "--cleanup", "--resource", self.clone, "--node",
                                  name])  # fmt: skip

    def _mark_standby(self, name: str) -> None:
        signal_file = self.host_path(name, f"{PGDATA}/standby.signal")
        signal_file.touch()
        chown_to(signal_file, "postgres")

    def _postgres_log_tail(self, name: str, lines: int = 15) -> str:
        log = self.node_dir(name) / "var-log-postgresql" / "postgresql.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    async def _wait_rejoined(self, name: str, primary: str) -> str:
        """Wait until the cluster is healthy with ``name`` back; return "" or why not.

        A start that failed while the node came back (PAF's probe raced the rebuild)
        leaves a fail count that keeps the instance stopped until a cleanup: one more
        cleanup after ``_REJOIN_CLEANUP_S`` lets Pacemaker try again.
        """
        with anyio.move_on_after(_REJOIN_CLEANUP_S):
            await self.wait_healthy()
            return ""
        self.progress(f"{name} has not rejoined after {_REJOIN_CLEANUP_S:.0f} s: clean up again")
        await self.exec(primary, ["crm_resource", "--cleanup", "--resource", self.clone, "--node",
                                  name], check=False)  # fmt: skip
        with anyio.move_on_after(_REJOIN_S - _REJOIN_CLEANUP_S):
            await self.wait_healthy()
            return ""
        _, why = await self.health()
        return why or "healthy only just now"

    async def _until_kept_stopped(self, name: str, primary: str) -> None:
        """Wait until the whole cluster keeps ``name``'s instance stopped, and it is.

        Right after a heal (or a restart) the node is still rejoining, and what its
        Pacemaker did alone cannot be trusted. A fault-suite run showed the minority
        side's demote restart PostgreSQL as a standby, whose postmaster.pid then went
        missing, so PAF's stop failed ("PID file does not exist") and left that
        postmaster running. The data directory was rebuilt under it and it shut down
        with "lock file is invalid". So, with the ban in place: wait until the primary's
        view has the node online; clean up its instance (Pacemaker forgets the failed
        stop and probes again); let the cluster settle; then look for a postmaster in
        the node's own PID namespace, not for a pidfile, and shut down (SIGINT, fast)
        one that Pacemaker lost track of.

        Raises:
            TimeoutError: not within 120 s.
        """
        cleanup = ["crm_resource", "--cleanup", "--resource", self.clone, "--node", name]
        with anyio.fail_after(120):
            while name not in (view := await self.view(primary)).online or not view.quorum:
                await anyio.sleep(POLL)
            while True:
                await self.exec(primary, cleanup)
                # Short: a failed stop keeps the cluster from settling at all, and the
                # postmaster it left shuts itself down (immediately) within a minute.
                await self.exec(primary, ["crm_resource", "--wait", "--timeout=10s"], check=False)
                view = await self.view(primary)
                if name in {*view.promoted, *view.unpromoted}:
                    await anyio.sleep(POLL)  # the cluster has not stopped it yet
                    continue
                # Stopped, or failed to stop: either way only our own eyes can tell.
                strays = await self._postmasters(name)
                if not strays:
                    return
                self.progress(f"{name}: postmaster {strays} runs unknown to Pacemaker; SIGINT")
                for pid in strays:
                    await self.exec(name, ["kill", "-INT", str(pid)], check=False)
                await anyio.sleep(1)

    async def _postmasters(self, name: str) -> list[int]:
        """PIDs of the postmasters running in node ``name`` (its own PID namespace)."""
        listing = await self.exec(name, ["ps", "-e", "-o", "pid=,ppid=,comm="])
        return postmaster_pids(listing.stdout)

    async def _rebuild(self, name: str, primary: Node, *, full: bool = False) -> str:
        """Make ``name``'s data directory a copy of ``primary``'s: pg_rewind, else a base backup."""
        source = f"host={primary.address} user=postgres dbname=postgres"
        rewind = [f"{PG_BINDIR}/pg_rewind", "-D", PGDATA, f"--source-server={source}"]
        # A demoted ex-primary that went down uncleanly has standby.signal: pg_rewind's
        # crash recovery in single-user mode refuses standby mode, so it would fail and
        # fall back to a full copy. rejoin writes standby.signal again afterwards.
        for signal in ("standby.signal", "recovery.signal"):
            self.host_path(name, f"{PGDATA}/{signal}").unlink(missing_ok=True)
        if not full:
            result = await self.exec(name, rewind, user="postgres", check=False)
            if result.returncode == 0:
                return "pg_rewind"
            self.progress(f"pg_rewind failed ({result.stderr.strip()[-200:]}); pg_basebackup")
        data = self.host_path(name, PGDATA)
        await anyio.to_thread.run_sync(shutil.rmtree, data)
        await self._clone_from(name, primary)
        return "pg_basebackup"


def postmaster_pids(ps_output: str) -> list[int]:
    """The postmasters in ``ps -e -o pid=,ppid=,comm=`` output, sorted.

    A postmaster is a ``postgres`` process whose parent is not one: its backends and
    auxiliary processes are its children. Lines that are not three fields are skipped.
    """
    parents: dict[int, int] = {}
    for line in ps_output.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3 and fields[2].strip() == "postgres":  # noqa: PLR2004 - pid, ppid, comm
            parents[int(fields[0])] = int(fields[1])
    return sorted(pid for pid, parent in parents.items() if parent not in parents)
