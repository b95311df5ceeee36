"""A real one-node Corosync + Pacemaker cluster in its own namespaces, for tests.

Layout (docs/lab.md says why each piece is needed)::

    netns pgcm-test-<pid>-pcmk : lo only; corosync's one-node knet ring binds 127.0.0.1
      └─ unshare --mount --uts --pid --fork --mount-proc
         └─ PID 1 = pacemaker_init.sh: per-node bind mounts over /run, /etc/corosync,
            /var/lib/corosync, /var/log/corosync, /var/lib/pacemaker, /var/log/pacemaker and
            a private /dev/shm; then corosync -f and pacemakerd

The CIB is written before Pacemaker starts, with ``dc-deadtime=2s`` (the default 20 s is
most of a cold start), ``stonith-enabled=false`` and a promotable ``ocf:pacemaker:Stateful``
clone, so the node elects itself and promotes the clone in a few seconds. The host's own
Pacemaker state is never touched. Tear-down SIGKILLs the namespace's PID 1 (the kernel then
kills everything inside), deletes the network namespace, and removes ``/run/netns`` and
``/run/mount`` only when this fixture created them — also when start-up failed.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import final

import pytest

from pgcm_common.pacemaker import PacemakerError, parse_crm_mon
from pgcm_testkit.process import REQUIRE_BINARIES_ENV, require_binary, wait_until

__all__ = [
    "PacemakerNode",
    "pacemaker_node",
    "start_pacemaker_node",
]

NODE_NAME = "pcmk1"
RESOURCE_ID = "stateful"
CLONE_ID = "stateful-clone"
_INIT_SCRIPT = Path(__file__).with_name("pacemaker_init.sh")
_RUN_NETNS = Path("/run/netns")
_RUN_MOUNT = Path("/run/mount")
_BINARIES = ("ip", "unshare", "nsenter", "corosync", "corosync-cfgtool", "pacemakerd", "crm_mon")
_STATE_DIRS = (
    "run",
    "etc-corosync",
    "var-lib-corosync",
    "var-log-corosync",
    "var-log-pacemaker",
    "var-lib-pacemaker/cib",
    "var-lib-pacemaker/pengine",
    "var-lib-pacemaker/blackbox",
    "var-lib-pacemaker/cores",
)

_COROSYNC_CONF = f"""\
totem {{
    version: 2
    cluster_name: pgcmtest
    transport: knet
    crypto_cipher: none
    crypto_hash: none
}}
logging {{
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: /var/log/corosync/corosync.log
    timestamp: hires
}}
quorum {{
    provider: corosync_votequorum
}}
nodelist {{
    node {{
        name: {NODE_NAME}
        nodeid: 1
        ring0_addr: 127.0.0.1
    }}
}}
"""

# Written before Pacemaker starts: a missing cib.xml.sig only makes pacemaker-based
# compute the digest itself. Roles use the 2.1 names, hence the 3.7+ schema.
_CIB_XML = f"""\
<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0"
     admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="cib-bootstrap-options-stonith-enabled" name="stonith-enabled"
                value="false"/>
        <nvpair id="cib-bootstrap-options-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="cib-bootstrap-options-recheck" name="cluster-recheck-interval"
                value="1min"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources>
      <clone id="{CLONE_ID}">
        <meta_attributes id="{CLONE_ID}-meta_attributes">
          <nvpair id="{CLONE_ID}-promotable" name="promotable" value="true"/>
          <nvpair id="{CLONE_ID}-promoted-max" name="promoted-max" value="1"/>
        </meta_attributes>
        <primitive id="{RESOURCE_ID}" class="ocf" provider="pacemaker" type="Stateful">
          <operations>
            <op id="{RESOURCE_ID}-monitor-promoted" name="monitor" interval="5s"
                role="Promoted"/>
            <op id="{RESOURCE_ID}-monitor-unpromoted" name="monitor" interval="6s"
                role="Unpromoted"/>
          </operations>
        </primitive>
      </clone>
    </resources>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""


@final
@dataclass(frozen=True, slots=True)
class PacemakerNode:
    """A running one-node cluster, entered through its namespace init's PID."""

    name: str
    netns: str
    init_pid: int
    state_dir: Path
    resource_id: str = RESOURCE_ID
    clone_id: str = CLONE_ID

    @property
    def command_prefix(self) -> tuple[str, ...]:
        """Return the argv prefix that runs a command inside every namespace of the node."""
        return ("nsenter", "-t", str(self.init_pid), "-n", "-m", "-u", "-p", "--")

    def exec_in_node(self, argv: Sequence[str], *, timeout_s: float = 30) -> str:
        """Run ``argv`` inside the node and return its stdout; raise with output on failure."""
        result = subprocess.run(
            [*self.command_prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} in {self.name} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result.stdout

    def logs(self, lines: int = 40) -> str:
        """Return the tails of the node's corosync, pacemaker and init logs."""
        parts = []
        for relative in (
            "init.log",
            "var-log-corosync/corosync.log",
            "var-log-pacemaker/pacemaker.log",
        ):
            path = self.state_dir / relative
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                tail = ["(missing)"]
            parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)


def _require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "the Pacemaker fixture needs root (network, mount and PID namespaces)"
    if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def _prepare_state(state_dir: Path) -> None:
    for relative in _STATE_DIRS:
        (state_dir / relative).mkdir(parents=True, exist_ok=True)
    (state_dir / "etc-corosync/corosync.conf").write_text(_COROSYNC_CONF)
    cib = state_dir / "var-lib-pacemaker/cib/cib.xml"
    cib.write_text(_CIB_XML)
    cib.chmod(0o600)
    uid, gid = pwd.getpwnam("hacluster").pw_uid, grp.getgrnam("haclient").gr_gid
    for relative in ("var-lib-pacemaker", "var-log-pacemaker"):
        for root, dirs, files in os.walk(state_dir / relative):
            os.chown(root, uid, gid)
            for name in (*dirs, *files):
                os.chown(Path(root) / name, uid, gid)
    for relative in ("cib", "pengine", "blackbox", "cores"):
        (state_dir / "var-lib-pacemaker" / relative).chmod(0o750)
    (state_dir / "var-log-pacemaker").chmod(0o770)


def _run(argv: Sequence[str]) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=30)


def _child_pid(parent: int, *, deadline_s: float) -> int:
    # unshare --fork: the namespace's PID 1 is unshare's only child.
    children = Path(f"/proc/{parent}/task/{parent}/children")
    found: list[int] = []

    def has_child() -> bool:
        with contextlib.suppress(FileNotFoundError):
            found[:] = [int(word) for word in children.read_text().split()]
        return bool(found)

    wait_until(has_child, deadline_s=deadline_s, what="the namespace init to start")
    return found[0]


def _has_dc(node: PacemakerNode) -> bool:
    result = subprocess.run(
        [*node.command_prefix, "crm_mon", "-1", "--output-as=xml"],
        capture_output=True,
        timeout=10,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        return False
    try:
        state = parse_crm_mon(result.stdout, resource_id=node.resource_id)
    except PacemakerError:
        return False
    return state.dc is not None


@contextlib.contextmanager
def start_pacemaker_node(state_dir: Path, *, deadline_s: float = 60) -> Iterator[PacemakerNode]:
    """Start a one-node cluster, wait until it has elected itself DC, always tear it down.

    Raises:
        TimeoutError: no DC within ``deadline_s``; the message holds the node's logs.
    """
    netns = f"pgcm-test-{os.getpid()}-pcmk"
    created_run_netns = not _RUN_NETNS.exists()
    created_run_mount = not _RUN_MOUNT.exists()
    _prepare_state(state_dir)
    unshare: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None
    try:
        _run(["ip", "netns", "add", netns])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        with (state_dir / "init.log").open("ab") as init_log:
            unshare = subprocess.Popen(
                [
                    *("ip", "netns", "exec", netns),
                    *("unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc"),
                    *("bash", str(_INIT_SCRIPT), str(state_dir), NODE_NAME),
                ],
                stdin=subprocess.DEVNULL,
                stdout=init_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        init_pid = _child_pid(unshare.pid, deadline_s=10)
        node = PacemakerNode(name=NODE_NAME, netns=netns, init_pid=init_pid, state_dir=state_dir)
        try:
            wait_until(lambda: _has_dc(node), deadline_s=deadline_s, what="a Pacemaker DC")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{node.logs()}") from exc
        yield node
    finally:
        _stop(unshare, init_pid)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False, timeout=30)
        _remove_if_created(created_run_netns=created_run_netns, created_run_mount=created_run_mount)


def _stop(unshare: subprocess.Popen[bytes] | None, init_pid: int | None) -> None:
    if init_pid is not None:
        # PID 1 of a PID namespace: killing it makes the kernel kill every process inside.
        with contextlib.suppress(ProcessLookupError):
            os.kill(init_pid, signal.SIGKILL)
    if unshare is None:
        return
    try:
        unshare.wait(timeout=10)
    except subprocess.TimeoutExpired:
        unshare.kill()
        unshare.wait(timeout=10)


def _remove_if_created(*, created_run_netns: bool, created_run_mount: bool) -> None:
    # Another namespace user (the lab, a parallel test run) may still need these.
    if created_run_netns and _RUN_NETNS.is_dir() and not any(_RUN_NETNS.iterdir()):
        # iproute2 turns /run/netns into a bind mount of itself before it adds a namespace.
        subprocess.run(["umount", str(_RUN_NETNS)], capture_output=True, check=False, timeout=30)
        with contextlib.suppress(OSError):
            _RUN_NETNS.rmdir()
    if created_run_mount and _RUN_MOUNT.is_dir():
        with contextlib.suppress(OSError):
            # libmount's utab may be left empty behind; rmdir refuses a non-empty dir.
            for leftover in _RUN_MOUNT.iterdir():
                if leftover.name == "utab" and leftover.stat().st_size == 0:
                    leftover.unlink()
            _RUN_MOUNT.rmdir()


@pytest.fixture(scope="session")
def pacemaker_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacemakerNode]:
    """Yield a running one-node Corosync + Pacemaker cluster with a promotable clone.

    The clone may not be promoted yet when the fixture yields: wait for it with a deadline.
    """
    _require_root()
    for binary in _BINARIES:
        require_binary(binary)
    with start_pacemaker_node(tmp_path_factory.mktemp("pacemaker")) as node:
        yield node
