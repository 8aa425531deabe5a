"""EST encodings: RFC 8951 base64 in and out, certs-only CMS, CsrAttrs DER, multipart replies."""

from __future__ import annotations

import base64
import email
import email.policy
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca.errors import BadRequest
from est_server import messages


def _certificate(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_wrap_base64_makes_64_character_lines():
    der = bytes(range(256)) * 3
    wrapped = messages.wrap_base64(der)
    lines = wrapped.split(b"\n")
    assert lines[-1] == b""
    assert all(len(line) == 64 for line in lines[:-2]) and 0 < len(lines[-2]) <= 64
    assert base64.b64decode(wrapped) == der
    assert messages.wrap_base64(der, "\r\n").count(b"\r\n") == len(lines) - 1


@pytest.mark.parametrize(
    ("body", "cte"),
    [
        (base64.b64encode(b"\x30\x03\x02\x01\x05"), None),
        (base64.b64encode(b"\x30\x03\x02\x01\x05") + b"\r\n", "base64"),
        (b"MAMC\r\nAQU=\n", None),
        (b"MAMCAQU", None),  # padding left off
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQU=\n-----END CERTIFICATE REQUEST-----\n",
            None,
        ),
        (b"\x30\x03\x02\x01\x05", "binary"),
        (b"\x30\x03\x02\x01\x05", None),
    ],
)
def test_decode_body_accepts_what_deployed_clients_send(body: bytes, cte: str | None):
    assert messages.decode_body(body, cte) == b"\x30\x03\x02\x01\x05"


@pytest.mark.parametrize("body", [b"", b"  \n", b"not base64!", b"MAMC*AQU=", b"===="])
def test_decode_body_refuses_what_is_not_base64(body: bytes):
    with pytest.raises(BadRequest):
        messages.decode_body(body, None)


def test_certs_only_is_a_signed_data_without_signers():
    certificates = [_certificate("a"), _certificate("b")]
    info = cms.ContentInfo.load(messages.certs_only(certificates))
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    assert len(signed["signer_infos"]) == 0
    assert signed["encap_content_info"]["content_type"].native == "data"
    # certificates is a SET OF: DER may reorder it.
    assert sorted(c.chosen.dump() for c in signed["certificates"]) == sorted(
        c.public_bytes(Encoding.DER) for c in certificates
    )


def test_csr_attrs_lists_key_type_attribute_and_oids():
    der = messages.csr_attrs(["1.2.840.113549.1.9.7", "1.3.6.1.1.1.1.22"], "ec-p384")
    assert der is not None
    parsed = messages.CsrAttrs.load(der)
    items = [(item.name, item.chosen) for item in parsed]
    assert items[0][0] == "attribute"
    assert items[0][1]["type"].dotted == "1.2.840.10045.2.1"
    assert [v.parsed.dotted for v in items[0][1]["values"]] == ["1.3.132.0.34"]
    assert [chosen.dotted for name, chosen in items[1:]] == [
        "1.2.840.10045.4.3.3",
        "1.2.840.113549.1.9.7",
        "1.3.6.1.1.1.1.22",
    ]
    assert messages.CsrAttrs.load(der).dump(force=True) == der  # canonical DER


def test_csr_attrs_is_none_when_nothing_is_asked():
    assert messages.csr_attrs([], None) is None


def test_multipart_has_key_then_certificate_and_ends_at_the_closing_boundary():
    body, content_type = messages.multipart_key_and_certificate(b"\x01" * 100, b"\x02" * 200)
    boundary = content_type.split("boundary=", 1)[1]
    assert body.endswith(f"--{boundary}--".encode())
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
    assert parts[0]["Content-Transfer-Encoding"] == "base64"
    assert parts[0].get_payload(decode=True) == b"\x01" * 100
    assert parts[1].get_payload(decode=True) == b"\x02" * 200
    assert parts[1].get_param("smime-type") == "certs-only"
