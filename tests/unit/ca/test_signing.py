"""Certificate assembly after the token signs: the hand-spliced DER must be exactly what
asn1crypto (the reference) produces, for every key type and for TBS lengths across the DER
length forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca.signing import PreparedCertificate, assemble_certificate, prepare_certificate
from tests.support.software_signer import SoftwareSigner


def _builder(san_count: int) -> x509.CertificateBuilder:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    subject_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example.test")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")]))
        .public_key(subject_key)
        .serial_number(0x1234)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
    )
    if san_count:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(f"host-{i:05d}.example.test") for i in range(san_count)]
            ),
            critical=False,
        )
    return builder


def _reference(prepared: PreparedCertificate, signature: bytes) -> bytes:
    certificate = asn1_x509.Certificate.load(prepared.placeholder.public_bytes(Encoding.DER))
    certificate["signature_value"] = signature
    return certificate.dump(force=True)


# DER lengths in the one-octet (0 SANs), two-octet (3 SANs) and three-octet (4,000 SANs) long
# forms; the RSA-4096 signature itself needs a two-octet length.
@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "rsa-4096", "ed25519"])
@pytest.mark.parametrize("san_count", [0, 3, 4000])
def test_assembled_certificate_matches_the_reference_encoding_byte_for_byte(key_type, san_count):
    signer = SoftwareSigner(key_type)
    prepared = prepare_certificate(_builder(san_count), signer)
    signature = signer.sign(prepared.tbs)
    der = assemble_certificate(prepared, signature)
    assert der == _reference(prepared, signature)
    certificate = x509.load_der_x509_certificate(der)
    assert certificate.tbs_certificate_bytes == prepared.tbs
    assert certificate.signature == signature


def test_assembly_refuses_a_placeholder_that_does_not_carry_the_prepared_tbs():
    signer = SoftwareSigner("ec-p256")
    prepared = prepare_certificate(_builder(1), signer)
    other = prepare_certificate(_builder(1), signer)
    with pytest.raises(ValueError):
        assemble_certificate(PreparedCertificate(prepared.tbs, other.placeholder), b"\x00")
