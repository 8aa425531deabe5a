"""EST message encodings: base64 bodies (RFC 8951), certs-only CMS, CsrAttrs, multipart replies.

What we send is conservative for clients already in devices: base64 in 64-character lines,
`Content-Transfer-Encoding: base64`, and a multipart body that ends exactly at its closing
boundary. What we accept is liberal: base64 with or without line breaks, with or without
Content-Transfer-Encoding, and also PEM or raw DER, which some clients send.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Sequence

from asn1crypto import core as asn1
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from ca.errors import BadRequest

CERTS_ONLY_TYPE = "application/pkcs7-mime; smime-type=certs-only"
CSRATTRS_TYPE = "application/csrattrs"
PKCS8_TYPE = "application/pkcs8"

_WHITESPACE = re.compile(rb"[\s]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]+-----(.*?)-----END [A-Z0-9 ]+-----", re.S)


def wrap_base64(der: bytes, line_end: str = "\n") -> bytes:
    """Base64 in 64-character lines, each ended by `line_end` (RFC 8951 §3: what clients parse)."""
    text = base64.b64encode(der)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    end = line_end.encode()
    return b"".join(line + end for line in lines)


def decode_body(body: bytes, transfer_encoding: str | None) -> bytes:
    """The DER inside a request body; raises BadRequest for anything that is not base64 or DER.

    RFC 8951 §3 makes base64 the encoding whatever Content-Transfer-Encoding says; a body that
    says "binary" (or carries no CTE and starts like a DER SEQUENCE) is taken as DER.
    """
    if not body.strip():
        raise BadRequest("the request body is empty; send a base64 PKCS#10 request")
    encoding = (transfer_encoding or "").strip().lower()
    if encoding == "binary" or (not encoding and body[:1] == b"\x30" and not _is_base64(body)):
        return body
    pem = _PEM.search(body)
    if pem is not None:
        body = pem.group(1)
    compact = _WHITESPACE.sub(b"", body)
    if not _BASE64.fullmatch(compact) or not compact:
        raise BadRequest("the request body is not valid base64")
    # Padding is optional in what some clients send; put it back before decoding.
    compact += b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the request body is not valid base64") from None


def _is_base64(body: bytes) -> bool:
    return bool(_BASE64.fullmatch(_WHITESPACE.sub(b"", body)))


def certs_only(certificates: Sequence[x509.Certificate]) -> bytes:
    """A certs-only CMS SignedData (RFC 5652 §5, no signers; RFC 7030 §4.1.3) in DER."""
    return pkcs7.serialize_certificates(list(certificates), Encoding.DER)


# RFC 7030 §4.5.2: CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
class _AttributeValues(asn1.SetOf):
    _child_spec = asn1.Any


class _Attribute(asn1.Sequence):
    _fields = [("type", asn1.ObjectIdentifier), ("values", _AttributeValues)]


class _AttrOrOID(asn1.Choice):
    _alternatives = [("oid", asn1.ObjectIdentifier), ("attribute", _Attribute)]


class CsrAttrs(asn1.SequenceOf):
    _child_spec = _AttrOrOID


_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_KEY_TYPE_ATTRIBUTES: dict[str, tuple[tuple[str, str | None], ...]] = {
    # (OID, value OID): an Attribute when there is a value, else a bare OID.
    "ec-p256": ((_EC_PUBLIC_KEY, "1.2.840.10045.3.1.7"), ("1.2.840.10045.4.3.2", None)),
    "ec-p384": ((_EC_PUBLIC_KEY, "1.3.132.0.34"), ("1.2.840.10045.4.3.3", None)),
    "rsa-2048": (("1.2.840.113549.1.1.1", None), ("1.2.840.113549.1.1.11", None)),
    "rsa-3072": (("1.2.840.113549.1.1.1", None), ("1.2.840.113549.1.1.11", None)),
    "rsa-4096": (("1.2.840.113549.1.1.1", None), ("1.2.840.113549.1.1.11", None)),
    "ed25519": (("1.3.101.112", None),),
}
CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"  # noqa: S105 - an attribute OID


def csr_attrs(oids: Sequence[str], key_type: str | None) -> bytes | None:
    """The CsrAttrs DER a label asks for, or None when it asks for nothing (204)."""
    items: list[_AttrOrOID] = []
    seen: set[str] = set()
    if key_type is not None:
        for oid, value in _KEY_TYPE_ATTRIBUTES[key_type]:
            seen.add(oid)
            if value is None:
                items.append(_AttrOrOID(name="oid", value=asn1.ObjectIdentifier(oid)))
            else:
                values = _AttributeValues([asn1.ObjectIdentifier(value)])
                items.append(
                    _AttrOrOID(
                        name="attribute",
                        value=_Attribute({"type": asn1.ObjectIdentifier(oid), "values": values}),
                    )
                )
    for oid in oids:
        if oid not in seen:
            seen.add(oid)
            items.append(_AttrOrOID(name="oid", value=asn1.ObjectIdentifier(oid)))
    if not items:
        return None
    return CsrAttrs(items).dump()


def multipart_key_and_certificate(pkcs8_der: bytes, certs_only_der: bytes) -> tuple[bytes, str]:
    """RFC 7030 §4.4.2: the private key, then the certificate; returns (body, content type).

    The body ends exactly at the closing boundary: some device parsers treat any epilogue,
    even a lone CRLF, as a malformed part.
    """
    boundary = "est-" + secrets.token_hex(16)
    parts = []
    for content_type, der in ((PKCS8_TYPE, pkcs8_der), (CERTS_ONLY_TYPE, certs_only_der)):
        parts.append(
            f"--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n".encode()
            + wrap_base64(der, "\r\n")
        )
    body = b"".join(parts) + f"--{boundary}--".encode()
    return body, f"multipart/mixed; boundary={boundary}"
