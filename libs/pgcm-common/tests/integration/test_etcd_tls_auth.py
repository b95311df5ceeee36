"""TLS (server and client certificates) and user/password auth against a real etcd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import SecretStr

from pgcm_common.etcd import EtcdError, EtcdUnavailable, KeyValue, open_etcd, watch_keys
from pgcm_testkit.etcd import EtcdMember, EtcdTls, make_test_tls, random_key, start_etcd
from pgcm_testkit.process import require_binary, run_checked

pytestmark = pytest.mark.integration

PASSWORD = "etcd-secret"  # noqa: S105 - a throw-away test credential


# Both transports of the client (etcd.transport) must keep TLS and auth alike.
@pytest.fixture(params=["gateway", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> EtcdTls:
    return make_test_tls(tmp_path_factory.mktemp("etcd-tls-files"))


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory, tls: EtcdTls) -> Iterator[EtcdMember]:
    base = tmp_path_factory.mktemp("etcd-tls")
    with start_etcd(base, tls=tls) as cluster:
        member = cluster.members[0]
        etcdctl = [
            require_binary("etcdctl"),
            f"--endpoints={member.endpoint}",
            f"--cacert={tls.ca_file}",
            f"--cert={tls.client_cert_file}",
            f"--key={tls.client_key_file}",
        ]
        run_checked([*etcdctl, "user", "add", f"root:{PASSWORD}"])
        run_checked([*etcdctl, "auth", "enable"])
        yield member


async def test_tls_with_client_certificate_and_password_works(
    secure_etcd: EtcdMember, transport: str
) -> None:
    key = random_key("tls")
    settings = secure_etcd.settings(
        username="root", password=SecretStr(PASSWORD), transport=transport
    )
    assert settings.use_tls
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            await store.put(key, b"secret")
            kv = await store.get(key)
    assert kv is not None
    assert kv.value == b"secret"


async def test_a_wrong_password_is_an_error_not_unavailability(
    secure_etcd: EtcdMember, transport: str
) -> None:
    settings = secure_etcd.settings(
        username="root", password=SecretStr("wrong"), transport=transport
    )
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            with pytest.raises(EtcdError, match="authentication failed") as caught:
                await store.get(b"/x")
    assert not isinstance(caught.value, EtcdUnavailable)


async def test_a_plaintext_client_cannot_talk_to_a_tls_etcd(
    secure_etcd: EtcdMember, transport: str
) -> None:
    endpoint = f"127.0.0.1:{secure_etcd.client_port}"
    settings = secure_etcd.settings(
        endpoints=[endpoint], ca_file=None, cert_file=None, key_file=None, transport=transport
    )
    assert not settings.use_tls
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            with pytest.raises(EtcdUnavailable):
                await store.get(b"/x")


async def test_a_client_without_its_certificate_is_refused(
    secure_etcd: EtcdMember, transport: str
) -> None:
    settings = secure_etcd.settings(
        username="root",
        password=SecretStr(PASSWORD),
        cert_file=None,
        key_file=None,
        transport=transport,
    )
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            with pytest.raises(EtcdUnavailable):
                await store.get(b"/x")


async def test_a_client_certificate_with_a_common_name_works_and_names_the_user(
    tmp_path: Path, tls: EtcdTls, secure_etcd: EtcdMember
) -> None:
    # etcd's JSON gateway refuses a certificate whose subject has a CommonName; with
    # transport "auto" such a certificate selects gRPC, where etcd takes the CommonName
    # as the user (auth is on, no password is given: root only by its certificate).
    cert, key = _client_cert_with_common_name(tmp_path, tls, "root")
    settings = secure_etcd.settings(cert_file=cert, key_file=key)
    assert settings.transport == "auto"
    watched = random_key("cn")
    with anyio.fail_after(10):
        async with open_etcd(settings) as store, watch_keys(store, watched, 0) as events:
            await store.put(watched, b"by-certificate")
            seen = await events.receive()
    assert isinstance(seen, KeyValue)
    assert seen.value == b"by-certificate"


async def test_a_common_name_user_without_permissions_is_an_error_naming_it(
    tmp_path: Path, tls: EtcdTls, secure_etcd: EtcdMember
) -> None:
    # A CommonName etcd has no user for: refused by etcd on every member alike, an
    # error to fix, not unavailability.
    cert, key = _client_cert_with_common_name(tmp_path, tls, "pgcm-client")
    settings = secure_etcd.settings(cert_file=cert, key_file=key)
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            with pytest.raises(EtcdError, match=r"user name not found|permission denied") as caught:
                await store.get(b"/x")
    assert not isinstance(caught.value, EtcdUnavailable)


async def test_the_gateway_refuses_a_certificate_with_a_common_name_naming_it(
    tmp_path: Path, tls: EtcdTls, secure_etcd: EtcdMember
) -> None:
    # Signed by the CA etcd trusts, but etcd's JSON gateway refuses a certificate whose
    # subject has a CommonName, on every member alike: an error, not unavailability.
    cert, key = _client_cert_with_common_name(tmp_path, tls, "root")
    settings = secure_etcd.settings(cert_file=cert, key_file=key, transport="gateway")
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            with pytest.raises(EtcdError, match="CommonName") as caught:
                await store.get(b"/x")
    assert not isinstance(caught.value, EtcdUnavailable)


def _client_cert_with_common_name(
    directory: Path, tls: EtcdTls, common_name: str
) -> tuple[Path, Path]:
    openssl = require_binary("openssl")
    key, csr, cert = directory / "cn.key", directory / "cn.csr", directory / "cn.pem"
    ca_key = tls.ca_file.with_name("ca.key")  # make_test_tls keeps the CA key beside it
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run_checked(
        [openssl, "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}"]
    )
    run_checked(
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(tls.ca_file), "-CAkey",
         str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2"]
    )  # fmt: skip
    return cert, key
