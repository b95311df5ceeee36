"""Which etcd transport is chosen, and what choosing it loads (docs/adr/0006)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgcm_common._etcd.certs import subject_has_common_name
from pgcm_common._etcd.tls import choose_transport, client_context
from pgcm_common.etcd import EtcdError, EtcdSettings

CERTS = Path(__file__).parent.parent / "fixtures" / "etcd-certs"
# Self-signed, subject O=pgcm-test/CN=pgcm-client.
WITH_CN = CERTS / "cn.pem"
# Subject O=pgcm-test/OU=client, issued by a CA whose subject is CN=pgcm-test-ca.
WITHOUT_CN = CERTS / "no-cn.pem"
KEY = CERTS / "unused.key"  # never read: choosing reads only the certificate


def settings(cert: Path | None, transport: str = "auto") -> EtcdSettings:
    files = {} if cert is None else {"cert_file": cert, "key_file": KEY}
    return EtcdSettings(endpoints=["https://127.0.0.1:2379"], transport=transport, **files)


def test_a_certificate_with_a_common_name_is_recognised() -> None:
    assert subject_has_common_name(WITH_CN.read_bytes())


def test_a_common_name_of_the_issuer_only_does_not_count() -> None:
    assert not subject_has_common_name(WITHOUT_CN.read_bytes())


def test_the_first_certificate_of_a_chain_is_the_one_read() -> None:
    chain = WITHOUT_CN.read_bytes() + WITH_CN.read_bytes()
    assert not subject_has_common_name(chain)


@pytest.mark.parametrize(
    "pem",
    [
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        # Valid base64, but a DER sequence whose length runs past the end.
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.b64encode(b"\x30\x82\x10\x00\x30\x03")
        + b"\n-----END CERTIFICATE-----\n",
        # A certificate cut short before its subject.
        b"-----BEGIN CERTIFICATE-----\n"
        + base64.b64encode(b"\x30\x05\x30\x03\x02\x01\x01")
        + b"\n-----END CERTIFICATE-----\n",
    ],
    ids=["no-pem", "not-base64", "length-overrun", "no-subject"],
)
def test_what_is_not_a_certificate_is_refused(pem: bytes) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        subject_has_common_name(pem)


@pytest.mark.parametrize(
    ("cert", "transport", "chosen"),
    [
        (None, "auto", "gateway"),
        (WITHOUT_CN, "auto", "gateway"),
        (WITH_CN, "auto", "grpc"),
        (WITH_CN, "gateway", "gateway"),
        (WITHOUT_CN, "grpc", "grpc"),
        (None, "grpc", "grpc"),
    ],
)
def test_auto_chooses_grpc_exactly_for_a_certificate_with_a_common_name(
    cert: Path | None, transport: str, chosen: str
) -> None:
    assert choose_transport(settings(cert, transport)) == chosen


def test_an_unreadable_certificate_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(EtcdError, match=r"missing\.pem"):
        choose_transport(settings(missing))


def test_the_transport_setting_rejects_other_names() -> None:
    with pytest.raises(ValueError, match="transport"):
        settings(None, "http2")


@pytest.mark.parametrize(("transport", "alpn"), [("gateway", "http/1.1"), ("grpc", "h2")])
def test_the_tls_context_asks_for_the_transport_s_protocol(transport: str, alpn: str) -> None:
    # ALPN is write-only on SSLContext: a memory BIO handshake shows what is offered.
    import ssl  # noqa: PLC0415

    context = client_context(settings(None), transport)  # type: ignore[arg-type]
    assert context is not None
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert alpn.encode() in outgoing.read()


def _loaded_after_choosing(transport: str) -> list[str]:
    # A fresh interpreter: this test process imports grpclib for other tests.
    probe = (
        "import json, sys\n"
        "from pgcm_common.etcd import EtcdSettings\n"
        "from pgcm_common._etcd.client import _transport\n"
        f"_transport(EtcdSettings(transport={transport!r}))\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'grpclib', 'h2', 'betterproto2'})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    # The last line: structlog may log the choice to stdout before it.
    names: list[str] = json.loads(result.stdout.splitlines()[-1])
    return names


def test_the_gateway_transport_loads_no_grpclib_h2_or_betterproto2() -> None:
    assert _loaded_after_choosing("gateway") == []


def test_the_grpc_transport_loads_grpclib() -> None:
    assert "grpclib" in _loaded_after_choosing("grpc")
