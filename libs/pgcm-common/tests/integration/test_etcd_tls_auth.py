"""TLS (server and client certificates) and user/password auth against a real etcd."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from pydantic import SecretStr

from pgcm_common.etcd import EtcdError, EtcdUnavailable, open_etcd
from pgcm_testkit.etcd import EtcdMember, make_test_tls, random_key, start_etcd
from pgcm_testkit.process import require_binary, run_checked

pytestmark = pytest.mark.integration

PASSWORD = "etcd-secret"  # noqa: S105 - a throw-away test credential


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    base = tmp_path_factory.mktemp("etcd-tls")
    tls = make_test_tls(base / "tls")
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


async def test_tls_with_client_certificate_and_password_works(secure_etcd: EtcdMember) -> None:
    key = random_key("tls")
    settings = secure_etcd.settings(username="root", password=SecretStr(PASSWORD))
    assert settings.use_tls
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            await store.put(key, b"secret")
            kv = await store.get(key)
    assert kv is not None
    assert kv.value == b"secret"


async def test_a_wrong_password_is_an_error_not_unavailability(secure_etcd: EtcdMember) -> None:
    settings = secure_etcd.settings(username="root", password=SecretStr("wrong"))
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            with pytest.raises(EtcdError, match="authentication failed") as caught:
                await store.get(b"/x")
    assert not isinstance(caught.value, EtcdUnavailable)


async def test_a_plaintext_client_cannot_talk_to_a_tls_etcd(secure_etcd: EtcdMember) -> None:
    endpoint = f"127.0.0.1:{secure_etcd.client_port}"
    settings = secure_etcd.settings(
        endpoints=[endpoint], ca_file=None, cert_file=None, key_file=None
    )
    assert not settings.use_tls
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            with pytest.raises(EtcdUnavailable):
                await store.get(b"/x")


async def test_a_client_without_its_certificate_is_refused(secure_etcd: EtcdMember) -> None:
    settings = secure_etcd.settings(
        username="root", password=SecretStr(PASSWORD), cert_file=None, key_file=None
    )
    with anyio.fail_after(10):
        async with open_etcd(settings) as store:
            with pytest.raises(EtcdUnavailable):
                await store.get(b"/x")
