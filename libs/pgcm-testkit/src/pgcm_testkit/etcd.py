"""Test kit: real etcd (the Debian 3.4 binary) on 127.0.0.1, one member or a 3-member cluster.

Every member has its own data dir, free client/peer ports and a log file shown when it
fails to become healthy. Members are owned by PID; helpers restart a member or freeze it
(SIGSTOP/SIGCONT) to simulate a hung server. Tests isolate themselves with
:func:`random_key` prefixes rather than restarts.
"""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import final

import anyio
import anyio.to_thread
import pytest

from pgcm_common.etcd import EtcdSettings
from pgcm_testkit.process import ServerProcess, free_tcp_port, require_binary, run_checked

__all__ = [
    "EtcdCluster",
    "EtcdMember",
    "EtcdTls",
    "etcd",
    "etcd_cluster",
    "make_test_tls",
    "random_key",
    "start_etcd",
]

_READY_DEADLINE_S = 20
_HEALTH_TIMEOUT_S = 1.0


def random_key(label: str = "test") -> bytes:
    """Return a fresh key prefix (``/pgcm-test/<label>-<random>``) to isolate a test."""
    return f"/pgcm-test/{label}-{uuid.uuid4().hex[:12]}".encode()


@final
@dataclass(frozen=True, slots=True)
class EtcdTls:
    """TLS material: a CA, the server's certificate for 127.0.0.1, and a client certificate.

    With ``client_cert_auth`` the server requires a client certificate signed by the CA.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path
    client_cert_auth: bool = True


def make_test_tls(directory: Path, *, client_cert_auth: bool = True) -> EtcdTls:
    """Create a throw-away CA, a server cert for 127.0.0.1 and a client cert with openssl.

    The client certificate's subject has no CommonName, so pgcm's default transport
    speaks etcd's JSON gateway with it (the gateway refuses certificates that carry
    one; pgcm then speaks gRPC). The CA's key stays as ``ca.key`` beside ``ca.pem``, for
    tests that sign certificates of their own (one with a CommonName, say).
    """
    openssl = require_binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    run_checked([openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca),
                 "-days", "2", "-subj", "/CN=pgcm-test-ca"])  # fmt: skip
    san = directory / "san.cnf"
    san.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, extra in (
        ("server", "/CN=pgcm-server", ["-extfile", str(san)]),
        ("client", "/O=pgcm-test/OU=client", []),
    ):
        key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        run_checked([openssl, "req", *ec, "-keyout", str(key), "-out", str(csr),
                     "-subj", subject])  # fmt: skip
        run_checked([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca),
                     "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
                     "-days", "2", *extra])  # fmt: skip
    return EtcdTls(
        ca_file=ca,
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client.key",
        client_cert_auth=client_cert_auth,
    )


@final
@dataclass
class EtcdMember:
    """One etcd member started by the test kit."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: ServerProcess
    tls: EtcdTls | None = None

    @property
    def endpoint(self) -> str:
        """Return the client endpoint, as ``EtcdSettings.endpoints`` takes it."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int:
        """Return the member's PID."""
        return self.process.pid

    def healthy(self) -> bool:
        """Return whether ``/health`` answers ``{"health": "true"}``."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca_file))
            context.load_cert_chain(self.tls.client_cert_file, self.tls.client_key_file)
        try:
            with urllib.request.urlopen(  # noqa: S310 - a fixed loopback URL we built
                f"{self.endpoint}/health", timeout=_HEALTH_TIMEOUT_S, context=context
            ) as response:
                body = json.loads(response.read())
        except (OSError, ValueError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def start(self) -> None:
        """Start the member (data dir kept) and wait until it is healthy."""
        self.process.start()
        self.process.wait_ready(self.healthy, deadline_s=_READY_DEADLINE_S)

    def stop(self) -> None:
        """Stop the member by PID (SIGTERM, then SIGKILL)."""
        self.process.stop()

    def restart(self) -> None:
        """Stop and start again with the same data; wait until healthy."""
        self.process.restart(self.healthy, deadline_s=_READY_DEADLINE_S)

    def freeze(self) -> None:
        """SIGSTOP the member: it keeps its sockets but answers nothing (a hang)."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen member."""
        self.process.send_signal(signal.SIGCONT)

    def wait_healthy(self, deadline_s: float = _READY_DEADLINE_S) -> None:
        """Wait until the member is healthy again (after a thaw or a restart)."""
        self.process.wait_ready(self.healthy, deadline_s=deadline_s)

    def settings(self, **overrides: object) -> EtcdSettings:
        """Return client settings for this member alone."""
        return _settings([self], overrides)


@final
@dataclass
class EtcdCluster:
    """A set of etcd members forming one cluster."""

    members: tuple[EtcdMember, ...]

    @property
    def endpoints(self) -> list[str]:
        """Return every member's client endpoint, in member order."""
        return [member.endpoint for member in self.members]

    def settings(self, **overrides: object) -> EtcdSettings:
        """Return client settings listing every member."""
        return _settings(self.members, overrides)

    def healthy(self) -> bool:
        """Return whether every running member is healthy."""
        return all(m.healthy() for m in self.members if m.process.running)

    def wait_healthy(self, deadline_s: float = _READY_DEADLINE_S) -> None:
        """Wait until every member is healthy (a thawed leader forces an election)."""
        for member in self.members:
            member.wait_healthy(deadline_s)

    @contextlib.asynccontextmanager
    async def frozen(self, member: EtcdMember) -> AsyncIterator[EtcdMember]:
        """SIGSTOP ``member`` for the block; then SIGCONT it and wait until all are healthy.

        The member is thawed also when the block fails or is cancelled (shielded; the
        blocking signal and health calls run in a worker thread).
        """
        await anyio.to_thread.run_sync(member.freeze)
        try:
            yield member
        finally:
            with anyio.move_on_after(3 * _READY_DEADLINE_S + 5, shield=True):
                await anyio.to_thread.run_sync(member.thaw)
                await anyio.to_thread.run_sync(self.wait_healthy)


def _settings(members: Sequence[EtcdMember], overrides: dict[str, object]) -> EtcdSettings:
    values: dict[str, object] = {"endpoints": [m.endpoint for m in members]}
    tls = members[0].tls
    if tls is not None:
        values["ca_file"] = tls.ca_file
        values["cert_file"] = tls.client_cert_file
        values["key_file"] = tls.client_key_file
    values.update(overrides)
    return EtcdSettings.model_validate(values)


def _argv(
    binary: str, member: EtcdMember, initial_cluster: str, token: str, tls: EtcdTls | None
) -> list[str]:
    client_scheme = "https" if tls else "http"
    client_url = f"{client_scheme}://127.0.0.1:{member.client_port}"
    peer_url = f"http://127.0.0.1:{member.peer_port}"
    argv = [
        binary,
        f"--name={member.name}",
        f"--data-dir={member.data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-token={token}",
        "--initial-cluster-state=new",
        # Fast elections keep a stopped member's test short on a 2-core machine.
        "--heartbeat-interval=100",
        "--election-timeout=1000",
        "--logger=zap",
        "--log-outputs=stderr",
    ]
    if tls is not None:
        argv += [
            f"--cert-file={tls.cert_file}",
            f"--key-file={tls.key_file}",
            f"--trusted-ca-file={tls.ca_file}",
        ]
        if tls.client_cert_auth:
            argv.append("--client-cert-auth")
    return argv


@contextlib.contextmanager
def start_etcd(
    base_dir: Path, *, members: int = 1, tls: EtcdTls | None = None
) -> Iterator[EtcdCluster]:
    """Start an etcd cluster of ``members`` members under ``base_dir``; stop it on exit.

    All members start at once (a cluster needs a quorum before any member is healthy),
    then each is waited for. Every member is stopped by PID afterwards, also on failure.
    """
    binary = require_binary("etcd")
    token = f"pgcm-{uuid.uuid4().hex[:8]}"
    cluster_members: list[EtcdMember] = []
    for index in range(members):
        name = f"m{index}"
        data_dir = base_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)  # etcd 3.4 warns about (and 3.5 refuses) looser data dirs
        cluster_members.append(
            EtcdMember(
                name=name,
                client_port=free_tcp_port(),
                peer_port=free_tcp_port(),
                data_dir=data_dir / "data",
                process=ServerProcess(
                    name=f"etcd-{name}", argv=[], log_path=base_dir / f"{name}.log"
                ),
                tls=tls,
            )
        )
    initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in cluster_members)
    for member in cluster_members:
        member.process.argv = _argv(binary, member, initial, token, tls)
    try:
        for member in cluster_members:
            member.process.start()
        for member in cluster_members:
            member.process.wait_ready(member.healthy, deadline_s=_READY_DEADLINE_S)
        yield EtcdCluster(tuple(cluster_members))
    finally:
        for member in cluster_members:
            member.stop()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """A single-member etcd for the whole session.

    Tests that restart or freeze it must leave it healthy (``restart``/``thaw``).
    """
    with start_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster.members[0]


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster for the whole session (each member its own data dir)."""
    with start_etcd(tmp_path_factory.mktemp("etcd-cluster"), members=3) as cluster:
        yield cluster
