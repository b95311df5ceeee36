"""Whether a PEM client certificate's subject has a CommonName.

etcd's JSON gateway refuses client certificates whose subject has a CommonName
(docs/adr/0006), so ``transport = "auto"`` picks gRPC for them. The standard library
loads a certificate into an ``SSLContext`` but offers no public way to read its subject,
so this walks the certificate's DER just far enough: ``Certificate`` -> ``TBSCertificate``
-> ``subject`` (a sequence of sets of type/value pairs) -> the commonName type, OID
2.5.4.3. Pure: the caller reads the file.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["subject_has_common_name"]

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_SEQUENCE = 0x30
_SET = 0x31
_OID = 0x06
_EXPLICIT_VERSION = 0xA0  # [0] EXPLICIT Version, absent in v1 certificates
_COMMON_NAME_OID = bytes([0x55, 0x04, 0x03])  # 2.5.4.3
_LONG_FORM = 0x80
# TBSCertificate's fields before the subject: serialNumber, signature, issuer, validity.
_FIELDS_BEFORE_SUBJECT = 4


def subject_has_common_name(pem: bytes) -> bool:
    """Return whether the first certificate in ``pem`` has a CommonName in its subject.

    Raises:
        ValueError: ``pem`` holds no PEM certificate, or it is not a DER certificate.
    """
    der = _first_certificate(pem)
    certificate = _children(der, *_content(der, 0, _SEQUENCE))
    if not certificate:
        raise ValueError("empty certificate")
    tbs = _children(der, *_content(der, certificate[0], _SEQUENCE))
    if tbs and der[tbs[0]] == _EXPLICIT_VERSION:
        tbs = tbs[1:]
    if len(tbs) <= _FIELDS_BEFORE_SUBJECT:
        raise ValueError("certificate has no subject")
    subject = _content(der, tbs[_FIELDS_BEFORE_SUBJECT], _SEQUENCE)
    for rdn in _children(der, *subject):
        for pair in _children(der, *_content(der, rdn, _SET)):
            fields = _children(der, *_content(der, pair, _SEQUENCE))
            if fields:
                start, end = _content(der, fields[0], _OID)
                if der[start:end] == _COMMON_NAME_OID:
                    return True
    return False


def _first_certificate(pem: bytes) -> bytes:
    begin = pem.find(_BEGIN)
    end = pem.find(_END, begin + 1)
    if begin < 0 or end < 0:
        raise ValueError("no PEM certificate")
    try:
        return base64.b64decode(b"".join(pem[begin + len(_BEGIN) : end].split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("PEM certificate is not base64") from exc


def _content(der: bytes, at: int, tag: int) -> tuple[int, int]:
    """Return where the content of the element at ``at`` (which must be ``tag``) lies."""
    if at + 2 > len(der) or der[at] != tag:
        raise ValueError(f"expected DER tag {tag:#x} at {at}")
    length = der[at + 1]
    start = at + 2
    if length & _LONG_FORM:
        size = length & ~_LONG_FORM
        if not 0 < size <= 4 or start + size > len(der):  # noqa: PLR2004 - 4 GiB is plenty
            raise ValueError(f"bad DER length at {at}")
        length = int.from_bytes(der[start : start + size], "big")
        start += size
    if start + length > len(der):
        raise ValueError(f"DER element at {at} runs past the end")
    return start, start + length


def _children(der: bytes, start: int, end: int) -> list[int]:
    """Return where each element inside ``der[start:end]`` begins."""
    found: list[int] = []
    at = start
    while at < end:
        found.append(at)
        _, at = _content(der, at, der[at])
    if at != end:
        raise ValueError("DER elements overrun their container")
    return found
