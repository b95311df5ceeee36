"""The main program of one compose container: render, provision, run and watch a lab node.

``python3 -m pgcm_lab.node run`` (the image's command; ``PGCM_LAB_NODE`` names the node,
``PGCM_LAB_SIZE`` the number of Postgres nodes) does on a Postgres node what
:meth:`pgcm_lab.lab.Lab.up` and :func:`pgcm_lab.pgcm.start_pgcm` do in the netns lab,
with the same renderer and the same steps (:mod:`pgcm_lab.provision`):

1. write the node's files (:func:`pgcm_lab.render.node_files`, the CIB without the PAF
   clone) and pgcm's configuration (:mod:`pgcm_lab.pgcmconf`) to the packaged paths
   ``/etc/pgcm/<service>.toml``;
2. start Corosync, Pacemaker, the etcd member and PgBouncer;
3. bootstrap PostgreSQL on the first node, clone it on the others (they tell the first
   node through marker files on the shared ``/bootstrap`` volume), stop it;
4. on the first node: add the PAF clone and the pgcm alert agent to the CIB;
5. start the node's pgcm services from their packaged systemd units
   (:mod:`pgcm_lab.units`), restarted as the units say;
6. watch: a cluster daemon that exits ends the container (non-zero), SIGTERM stops
   everything.

The app node writes its files, starts PgBouncer and pgcm-proxy. ``install`` (used by
the Dockerfile) installs the role's .debs.
Standard library only: this runs with Debian's ``python3``.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, final

from pgcm_lab import pgcmconf, provision
from pgcm_lab.render import (
    RenderedFile,
    etcd_argv,
    node_files,
    render_pg_hba,
    render_postgresql_conf,
    write_files,
)
from pgcm_lab.topology import APP_NODE, PGDATA, RESOURCE, Node, Topology
from pgcm_lab.units import UnitSpec, parse_unit, prepare

__all__ = ["main", "pgcm_files", "select_debs"]

BOOTSTRAP: Final = Path("/bootstrap")
UNIT_DIR: Final = Path("/lib/systemd/system")
LOG_DIR: Final = Path("/var/log/pgcm-lab")
_POLL: Final = 0.2
_STOP_GRACE_S: Final = 5.0
# (path, owner, group, mode) created at every start: /run is a fresh tmpfs.
_DB_DIRS: Final = (
    ("/run/postgresql", "postgres", "postgres", 0o2775),
    ("/run/pgbouncer", "postgres", "postgres", 0o755),
    ("/run/crm", "hacluster", "haclient", 0o750),
    ("/var/log/postgresql", "postgres", "postgres", 0o775),
    ("/var/lib/postgresql/15", "postgres", "postgres", 0o755),
    ("/var/lib/etcd", "root", "root", 0o700),
    (str(LOG_DIR), "root", "root", 0o755),
)
_APP_DIRS: Final = (
    ("/run/pgbouncer", "postgres", "postgres", 0o755),
    ("/var/log/postgresql", "postgres", "postgres", 0o775),
    (str(LOG_DIR), "root", "root", 0o755),
)
# Where each package's unit reads its configuration (--config-file), with the group and
# mode the package's maintainer scripts give it: readable by root and the daemon's group.
_CONFIG: Final[Mapping[str, tuple[str, str, int]]] = {
    "pgcm-supervise": ("/etc/pgcm/supervise.toml", "haclient", 0o640),
    "pgcm-proxy": ("/etc/pgcm/proxy.toml", "postgres", 0o640),
    # group pgcm may run pgcm-failover without root (the package's statoverride)
    "pgcm-failover": ("/etc/pgcm/failover.toml", "pgcm", 0o640),
}


def log(message: str) -> None:
    """One line on stderr (``docker compose logs``)."""
    sys.stderr.write(f"pgcm-lab-node: {message}\n")
    sys.stderr.flush()


def pgcm_files(topology: Topology, node: Node) -> list[RenderedFile]:
    """The pgcm configuration of ``node``: one TOML per installed package, the template.

    Every file holds the same tables (as the netns lab's single ``pgcm.toml``); each
    service reads its own. ``owner`` holds the file's group here (the owner is root).
    """
    toml = pgcmconf.render_pgcm_toml(topology, node)
    files = [
        RenderedFile(path, toml, owner=group, mode=mode)
        for path, group, mode in (_CONFIG[p] for p in provision.packages(node))
    ]
    template = pgcmconf.render_pgbouncer_template(node)
    return [*files, RenderedFile(pgcmconf.TEMPLATE_PATH, template, owner="root", mode=0o644)]


def select_debs(directory: Path, names: Sequence[str]) -> list[Path]:
    """The newest ``<name>_<version>_<arch>.deb`` in ``directory`` for each of ``names``.

    Raises:
        FileNotFoundError: a package has no .deb there (the message says how to build it).
    """
    chosen: list[Path] = []
    for name in names:
        found = sorted(directory.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
        if not found:
            msg = (
                f"no {name}_*.deb in {directory}: build the packages first "
                "(uv run python packaging/build_debs.py build/debs)"
            )
            raise FileNotFoundError(msg)
        chosen.append(found[-1])
    return chosen


def _install(role: str, debs: Path) -> int:
    paths = select_debs(debs, provision.PACKAGES[role])
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *map(str, paths)]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(argv, check=False, env=env).returncode


# ---------------------------------------------------------------------- processes
def _ids(user: str, group: str | None = None) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, grp.getgrnam(group).gr_gid if group else entry.pw_gid


def _out(name: str) -> IO[bytes]:
    return (LOG_DIR / f"{name}.log").open("ab")


@final
@dataclass(slots=True)
class Child:
    """A process this node runs; units are restarted as their unit file says."""

    name: str
    proc: subprocess.Popen[bytes]
    unit: UnitSpec | None = None
    failed_at: float | None = None


def spawn(
    argv: Sequence[str],
    *,
    user: str = "root",
    group: str | None = None,
    env: Mapping[str, str] | None = None,
    umask: int = 0o022,
    output: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as ``user`` (with the user's supplementary groups)."""
    uid, gid = _ids(user, group)
    groups = os.getgrouplist(user, gid)
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    full_env |= {"HOME": pwd.getpwnam(user).pw_dir, "USER": user, "LOGNAME": user}
    full_env |= dict(env or {})
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        user=uid,
        group=gid,
        extra_groups=groups,
        umask=umask,
        env=full_env,
        cwd="/",
    )


def run_as(argv: Sequence[str], user: str = "root") -> None:
    """Run ``argv`` to completion as ``user``.

    Raises:
        subprocess.CalledProcessError: it failed.
    """
    proc = spawn(argv, user=user)
    if (code := proc.wait()) != 0:
        raise subprocess.CalledProcessError(code, list(argv))


def start_unit(package: str) -> Child:
    """Start ``package``'s service as its packaged unit file says."""
    name = f"{package}.service"
    spec = parse_unit(name.removesuffix(".service"), (UNIT_DIR / name).read_text())
    argv, env = prepare(spec)
    proc = spawn(argv, user=spec.user, group=spec.group, env=env, umask=spec.umask)
    log(f"started {name} (pid {proc.pid}) as {spec.user}: {' '.join(argv)}")
    return Child(package, proc, unit=spec)


# ---------------------------------------------------------------------- provisioning
def _make_dirs(node: Node) -> None:
    for path, owner, group, mode in _APP_DIRS if node.is_app else _DB_DIRS:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, *_ids(owner, group))
        directory.chmod(mode)


def _write(topology: Topology, node: Node) -> None:
    files = node_files(topology, node.name, with_resources=False)
    if Path("/var/lib/pacemaker/cib/cib.xml").exists():
        # A restarted container keeps Pacemaker's CIB (it holds the clone by now).
        files = [f for f in files if not f.path.startswith("/var/lib/pacemaker/")]
    write_files(Path("/"), files, chown=True)
    for item in pgcm_files(topology, node):
        target = Path(item.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(item.content, encoding="utf-8")
        target.chmod(item.mode)
        os.chown(target, 0, grp.getgrnam(item.owner).gr_gid)


def _wait(check: Sequence[str], what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(check, check=False, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(_POLL)


def _bootstrap_first(topology: Topology) -> None:
    for stale in BOOTSTRAP.glob("*.done"):
        stale.unlink()  # a previous cluster's markers (volume kept by `down` without -v)
    run_as(provision.initdb_argv(), "postgres")
    with Path(PGDATA, "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(render_postgresql_conf(topology))
    with Path(PGDATA, "pg_hba.conf").open("a", encoding="utf-8") as hba:
        hba.write(render_pg_hba(topology))
    run_as(provision.bootstrap_start_argv(), "postgres")
    run_as(["psql", "-X", "-h", "/run/postgresql", "-U", "postgres", "-d", "postgres",
            "-qc", provision.CREATE_REPLICATOR], "postgres")  # fmt: skip
    for other in topology.others(topology.nodes[0].name):
        marker = BOOTSTRAP / f"{other.name}.done"
        log(f"waiting for {other.name} to clone")
        deadline = time.monotonic() + 300
        while not marker.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{other.name} did not clone within 300 s")
            time.sleep(_POLL)
    run_as(provision.stop_argv(), "postgres")


def _clone(topology: Topology, node: Node) -> None:
    first = topology.nodes[0]
    _wait(["pg_isready", "-q", "-h", str(first.address), "-p", "5432"], f"{first.name} PostgreSQL")
    # The first node creates the replication role just after its server starts: until
    # then pg_basebackup is refused (and removes what it created), so try again.
    deadline = time.monotonic() + 300
    while (code := spawn(provision.clone_argv(first), user="postgres").wait()) != 0:
        if time.monotonic() > deadline:
            raise subprocess.CalledProcessError(code, provision.clone_argv(first))
        log(f"pg_basebackup from {first.name} exited {code}; retrying in 1 s")
        shutil.rmtree(PGDATA, ignore_errors=True)
        time.sleep(1)
    signal_file = Path(PGDATA, "standby.signal")
    signal_file.touch()
    os.chown(signal_file, *_ids("postgres"))
    (BOOTSTRAP / f"{node.name}.done").touch()


def _cib(argv: Sequence[str]) -> bool:
    return subprocess.run(argv, check=False, capture_output=True).returncode == 0


def _release(topology: Topology) -> None:
    """Add the PAF clone and the alert agent (retried until Pacemaker's CIB answers)."""
    deadline = time.monotonic() + 120
    while not _cib(provision.release_clone_argv(topology)):
        if time.monotonic() > deadline:
            raise TimeoutError("the CIB did not take the PAF clone within 120 s")
        time.sleep(_POLL)
    replace, create = provision.register_alerts_argvs(
        provision.alerts_xml(provision.ALERT_AGENT, pgcmconf.NUDGE_SOCKET, RESOURCE)
    )
    if not _cib(replace) and not _cib(create):
        raise RuntimeError("could not add the pgcm alert agent to the CIB")
    log("PAF clone and pgcm alert agent added to the CIB")


def _start_cluster(topology: Topology, node: Node) -> list[Child]:
    children = [Child("corosync", spawn(provision.corosync_argv(), output=_out("corosync")))]
    _wait(["corosync-cfgtool", "-s"], "corosync", timeout=30)
    pacemaker = spawn(["pacemakerd"], env=provision.PACEMAKER_ENV, output=_out("pacemaker"))
    children.append(Child("pacemakerd", pacemaker))
    etcd = spawn(etcd_argv(topology, node), output=_out("etcd"))
    children.append(Child("etcd", etcd))
    return children


def _provision(topology: Topology, node: Node) -> list[Child]:
    _make_dirs(node)
    _write(topology, node)
    bouncer = spawn(provision.pgbouncer_argv(), user="postgres", output=_out("pgbouncer"))
    children = [Child("pgbouncer", bouncer)]
    if node.is_app:
        return children
    children += _start_cluster(topology, node)
    if not Path(PGDATA, "PG_VERSION").exists():
        if node == topology.nodes[0]:
            _bootstrap_first(topology)
            _release(topology)
        else:
            _clone(topology, node)
        log("PostgreSQL data directory ready")
    return children


# ---------------------------------------------------------------------- watching
def _stop(children: Sequence[Child]) -> None:
    for child in reversed(children):
        if child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for child in reversed(children):
        remaining = max(0.0, deadline - time.monotonic())
        try:
            child.proc.wait(remaining)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def _watch(children: list[Child], stopping: list[bool]) -> int:
    while not stopping:
        time.sleep(_POLL)
        for index, child in enumerate(children):
            code = child.proc.poll()
            if code is None:
                continue
            if child.unit is None:
                log(f"{child.name} exited with {code}: stopping the node")
                return 1
            if not child.unit.restarts_after(code):
                if code != 0:
                    log(f"{child.name} exited with {code}; its unit does not restart it")
                continue
            now = time.monotonic()
            if child.failed_at is None:
                log(f"{child.name} exited with {code}; restarting in {child.unit.restart_sec} s")
                child.failed_at = now
            elif now - child.failed_at >= child.unit.restart_sec:
                children[index] = start_unit(child.name)
    return 0


def _run() -> int:
    topology = Topology(size=int(os.environ.get("PGCM_LAB_SIZE", "3")))
    node = topology.node(os.environ.get("PGCM_LAB_NODE", APP_NODE))
    stopping: list[bool] = []

    def _on_term(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping")
        stopping.append(True)

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    children: list[Child] = []
    try:
        children = _provision(topology, node)
        children += [start_unit(p) for p in provision.daemons(node)]
        log(f"node {node.name} running: {', '.join(c.name for c in children)}")
        return _watch(children, stopping)
    finally:
        _stop(children)


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m pgcm_lab.node {run,install}``."""
    parser = argparse.ArgumentParser(prog="python3 -m pgcm_lab.node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="provision and run this node (the container's command)")
    install = sub.add_parser("install", help="install a role's pgcm .debs (image build)")
    install.add_argument("--role", choices=sorted(provision.PACKAGES), required=True)
    install.add_argument("--debs", type=Path, required=True, help="directory of .deb files")
    args = parser.parse_args(argv)
    if args.command == "install":
        return _install(args.role, args.debs)
    return _run()


if __name__ == "__main__":
    raise SystemExit(main())
