from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pgcm_common._pgwire.scram import ScramClient, ScramError
from pgcm_common._pgwire.wire import md5_password

# RFC 7677 section 3, with the user name left empty as PostgreSQL sends it (the user
# name is not part of the proof's key material, only of the auth message).
NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)


def test_scram_client_first_message_has_no_channel_binding() -> None:
    assert ScramClient("pencil", nonce=NONCE).client_first() == b"n,,n=,r=" + NONCE.encode()


def _server_side(password: str, client_first_bare: str, server_first: str, final: str) -> str:
    """Check the client's proof the way a SCRAM server does; return the server-final."""
    attributes = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(attributes["s"]), int(attributes["i"])
    )
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    without_proof, _, proof_b64 = final.rpartition(",p=")
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof_b64), signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key, "client proof rejected"
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return "v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()


def test_scram_proof_is_accepted_by_a_server_that_knows_the_password() -> None:
    client = ScramClient("pencil", nonce=NONCE)
    first = client.client_first().decode()
    final = client.client_final(SERVER_FIRST).decode()
    assert final.startswith("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=")
    server_final = _server_side("pencil", first.removeprefix("n,,"), SERVER_FIRST.decode(), final)
    client.verify_server_final(server_final.encode())


def test_scram_refuses_a_server_that_does_not_know_the_password() -> None:
    client = ScramClient("pencil", nonce=NONCE)
    first = client.client_first().decode()
    final = client.client_final(SERVER_FIRST).decode()
    forged = _server_side("pencil", first.removeprefix("n,,"), SERVER_FIRST.decode(), final)
    with pytest.raises(ScramError, match="signature"):
        client.verify_server_final(forged[:-6].encode() + b"AAAAA=")


def test_scram_proof_for_a_wrong_password_is_rejected_by_the_server() -> None:
    client = ScramClient("wrong", nonce=NONCE)
    first = client.client_first().decode()
    final = client.client_final(SERVER_FIRST).decode()
    with pytest.raises(AssertionError, match="client proof rejected"):
        _server_side("pencil", first.removeprefix("n,,"), SERVER_FIRST.decode(), final)


def test_scram_refuses_a_server_nonce_that_does_not_extend_ours() -> None:
    client = ScramClient("pencil", nonce="abc")
    client.client_first()
    with pytest.raises(ScramError, match="nonce"):
        client.client_final(b"r=xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


@pytest.mark.parametrize(
    "message", [b"garbage", b"r=abc,s=***,i=4096", b"r=abc,i=10", b"r=abc,s=AAAA,i=many"]
)
def test_scram_malformed_server_first_is_an_auth_error(message: bytes) -> None:
    client = ScramClient("pencil", nonce="abc")
    client.client_first()
    with pytest.raises(ScramError):
        client.client_final(message)


def test_scram_server_error_is_reported() -> None:
    client = ScramClient("pencil", nonce=NONCE)
    with pytest.raises(ScramError, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_md5_password_matches_postgres_formula() -> None:
    expected = "md5bb41a296aab6baccb36ff243a562abff"
    assert md5_password("postgres", "secret", b"\x01\x02\x03\x04") == expected
