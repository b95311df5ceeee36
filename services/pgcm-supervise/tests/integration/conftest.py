"""Fixtures shared by supervise's integration tests: a throw-away PKI made with openssl.

It lives in a conftest because ``--import-mode=importlib`` makes sibling test modules
unimportable; test modules import :class:`Certs` for annotations only (TYPE_CHECKING).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import final

import pytest


@final
@dataclass(frozen=True, slots=True)
class Certs:
    """PEM files of a test CA, a server (IP SAN 127.0.0.1), a client and a rogue client.

    The rogue client's certificate is signed by a second CA that the server does not trust.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(directory: Path, name: str) -> None:
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1"),
        *("-subj", f"/CN={name}"),
        cwd=directory,
    )


def _leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"),
        cwd=directory,
    )
    _openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext"),
        cwd=directory,
    )


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Return a fresh PKI (made once per session: openssl key generation is not free)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("certs")
    _ca(d, "test-ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "test-ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _leaf(d, "failover-client", "test-ca", "extendedKeyUsage=clientAuth\n")
    _leaf(d, "rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return Certs(
        ca=d / "test-ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "failover-client.crt",
        client_key=d / "failover-client.key",
        rogue_cert=d / "rogue-client.crt",
        rogue_key=d / "rogue-client.key",
    )
