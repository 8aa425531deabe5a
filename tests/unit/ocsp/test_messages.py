# ruff: noqa: S303 - RFC 5019 clients name certificates by SHA-1 CertIDs
"""The OCSP wire format: requests parsed by hand must match what real clients send, and every
malformed input must end as Malformed (never another exception)."""

from __future__ import annotations

import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from ocsp import messages
from ocsp.messages import Malformed, parse_request


def self_signed(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(0x80FF)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate, key


@pytest.fixture(scope="module")
def certificate() -> x509.Certificate:
    return self_signed("ca")[0]


def request_der(
    certificate, algorithm: hashes.HashAlgorithm | None = None, nonce: bytes | None = None
) -> bytes:
    algorithm = algorithm or hashes.SHA1()
    builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, certificate, algorithm)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256(), hashes.SHA512()])
def test_parses_what_cryptography_sends(certificate, algorithm):
    der = request_der(certificate, algorithm, nonce=b"n" * 16)
    parsed = parse_request(der, max_cert_ids=4)
    reference = ocsp.load_der_ocsp_request(der)
    (cert_id,) = parsed.cert_ids
    assert cert_id.serial == reference.serial_number == 0x80FF
    assert cert_id.name_hash == reference.issuer_name_hash
    assert cert_id.key_hash == reference.issuer_key_hash
    assert cert_id.hash_name == algorithm.name
    assert parsed.nonce == b"\x04\x10" + b"n" * 16
    # The CertID we build for a certificate is the one clients send.
    assert (
        messages.encode_cert_id(cert_id.hash_oid, cert_id.name_hash, cert_id.key_hash, 0x80FF)
        == cert_id.der
    )
    assert messages.encode_request(cert_id.der) == request_der(certificate, algorithm)


def test_several_cert_ids_and_the_limit(certificate):
    single = parse_request(request_der(certificate), max_cert_ids=1).cert_ids[0]
    body = messages.tlv(0x30, single.der)
    many = messages.tlv(0x30, messages.tlv(0x30, messages.tlv(0x30, body * 5)))
    assert len(parse_request(many, max_cert_ids=5).cert_ids) == 5
    with pytest.raises(Malformed):
        parse_request(many, max_cert_ids=4)


def test_every_truncation_and_corruption_is_malformed(certificate):
    der = request_der(certificate, nonce=b"x" * 20)
    for end in range(len(der)):
        with pytest.raises(Malformed):
            parse_request(der[:end], max_cert_ids=16)
    rng = random.Random(5)
    for _ in range(3000):
        corrupted = bytearray(der)
        for _ in range(rng.randint(1, 4)):
            corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
        try:
            parse_request(bytes(corrupted), max_cert_ids=16)
        except Malformed:
            pass
    for garbage in (b"", b"\x30", b"\x30\x80\x00\x00", b"\x30\x84\xff\xff\xff\xff", der + b"\x00"):
        with pytest.raises(Malformed):
            parse_request(garbage, max_cert_ids=16)


def test_error_responses_are_bare_statuses():
    parsed = ocsp.load_der_ocsp_response(messages.error_response(messages.MALFORMED_REQUEST))
    assert parsed.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    parsed = ocsp.load_der_ocsp_response(messages.error_response(messages.UNAUTHORIZED))
    assert parsed.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
