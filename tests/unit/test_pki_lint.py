"""The pkilint helper passes what RFC 5280 / RFC 6960 allow and reports what they forbid."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.pki_lint import (
    assert_lints_clean_certificate,
    assert_lints_clean_crl,
    assert_lints_clean_ocsp_response,
    lint_certificate,
    lint_certificate_file,
    lint_crl,
    lint_ocsp_response,
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pki_lint test root")])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, *, basic_constraints_critical: bool = True
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(CA_NAME)
        .issuer_name(CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None),
            critical=basic_constraints_critical,
        )
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _end_entity_certificate(
    ca_key: ec.EllipticCurvePrivateKey, *, san: x509.SubjectAlternativeName | None = None
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    if san is None:
        san = x509.SubjectAlternativeName(
            [x509.DNSName("www.example.test"), x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]
        )
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        # RFC 5280 §4.2.1.6: an empty subject makes the SAN critical.
        .add_extension(san, critical=True)
        .sign(ca_key, hashes.SHA256())
    )


def _crl(ca_key: ec.EllipticCurvePrivateKey, *, crl_number: bool = True, aki: bool = True) -> bytes:
    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(0x1234_5678_9ABC_DEF0)
        .revocation_date(NOW - dt.timedelta(hours=1))
        .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
        .build()
    )
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=[revoked])
        .issuer_name(CA_NAME)
        .last_update(NOW)
        .next_update(NOW + dt.timedelta(days=1))
    )
    if crl_number:
        builder = builder.add_extension(x509.CRLNumber(42), critical=False)
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(Encoding.DER)


def _ocsp_response(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    subject: x509.Certificate,
    *,
    next_update: dt.datetime,
) -> bytes:
    return (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=subject,
            issuer=ca_certificate,
            # RFC 5019 §2.2.1: CertID hashes are SHA-1, which is what OCSP clients send.
            algorithm=hashes.SHA1(),  # noqa: S303
            cert_status=ocsp.OCSPCertStatus.REVOKED,
            this_update=NOW,
            next_update=next_update,
            revocation_time=NOW - dt.timedelta(hours=1),
            revocation_reason=x509.ReasonFlags.key_compromise,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, ca_certificate)
        .sign(ca_key, hashes.SHA256())
        .public_bytes(Encoding.DER)
    )


@pytest.fixture(scope="module")
def ca_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca_certificate(ca_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return _ca_certificate(ca_key)


def test_well_formed_ca_and_end_entity_certificates_lint_clean(ca_key, ca_certificate) -> None:
    assert lint_certificate(ca_certificate.public_bytes(Encoding.DER)) == []
    assert_lints_clean_certificate(ca_certificate.public_bytes(Encoding.DER))
    assert_lints_clean_certificate(_end_entity_certificate(ca_key).public_bytes(Encoding.DER))


def test_ca_certificate_with_non_critical_basic_constraints_is_reported(ca_key) -> None:
    der = _ca_certificate(ca_key, basic_constraints_critical=False).public_bytes(Encoding.DER)

    findings = lint_certificate(der)

    assert any("pkix.basic_constraints_extension_not_critical" in f for f in findings), findings
    with pytest.raises(AssertionError, match="basic_constraints_extension_not_critical"):
        assert_lints_clean_certificate(der)


def test_empty_subject_alternative_name_is_reported(ca_key) -> None:
    der = _end_entity_certificate(ca_key, san=x509.SubjectAlternativeName([])).public_bytes(
        Encoding.DER
    )

    findings = lint_certificate(der)

    # SubjectAltName is SIZE (1..MAX): pkilint refuses to decode an empty one.
    assert any(f.startswith("itu.invalid_asn1_syntax (FATAL)") for f in findings), findings
    # Each finding names where in the certificate it was found.
    assert all(" at certificate" in f for f in findings), findings


def test_certificate_file_accepts_pem_and_der(tmp_path: Path, ca_key) -> None:
    good = _end_entity_certificate(ca_key)
    bad = _ca_certificate(ca_key, basic_constraints_critical=False)
    (tmp_path / "good.pem").write_bytes(good.public_bytes(Encoding.PEM))
    (tmp_path / "bad.der").write_bytes(bad.public_bytes(Encoding.DER))

    assert lint_certificate_file(tmp_path / "good.pem") == []
    assert lint_certificate_file(str(tmp_path / "bad.der"))


def test_undecodable_input_is_a_fatal_finding() -> None:
    assert lint_certificate(b"not a certificate")[0].startswith("pkilint.decoding_failed (FATAL)")
    with pytest.raises(AssertionError, match="decoding_failed"):
        assert_lints_clean_crl(b"\x30\x03\x02\x01\x01")


def test_crl_with_number_and_authority_key_identifier_lints_clean(ca_key) -> None:
    assert lint_crl(_crl(ca_key)) == []
    assert_lints_clean_crl(_crl(ca_key))


def test_crl_without_crl_number_is_reported(ca_key) -> None:
    findings = lint_crl(_crl(ca_key, crl_number=False))

    assert any("pkix.crl_number_missing" in f for f in findings), findings


def test_crl_without_authority_key_identifier_is_reported(ca_key) -> None:
    der = _crl(ca_key, aki=False)

    assert any("authority_key_identifier_missing" in f for f in lint_crl(der))
    with pytest.raises(AssertionError, match="authority_key_identifier_missing"):
        assert_lints_clean_crl(der)


def test_ocsp_response_from_cryptography_builder_lints_clean(ca_key, ca_certificate) -> None:
    der = _ocsp_response(
        ca_key,
        ca_certificate,
        _end_entity_certificate(ca_key),
        next_update=NOW + dt.timedelta(hours=12),
    )

    assert lint_ocsp_response(der) == []
    assert_lints_clean_ocsp_response(der)


def test_ocsp_response_whose_next_update_precedes_this_update_is_reported(
    ca_key, ca_certificate
) -> None:
    der = _ocsp_response(
        ca_key,
        ca_certificate,
        _end_entity_certificate(ca_key),
        next_update=NOW - dt.timedelta(hours=1),
    )

    with pytest.raises(AssertionError, match=r"pkix\.ocsp_negative_validity_period"):
        assert_lints_clean_ocsp_response(der)


def test_repeated_calls_give_the_same_findings(ca_key) -> None:
    # The validators are cached per process; a cached one must not carry state between documents.
    bad = _ca_certificate(ca_key, basic_constraints_critical=False).public_bytes(Encoding.DER)
    good = _end_entity_certificate(ca_key).public_bytes(Encoding.DER)

    first = lint_certificate(bad)
    assert lint_certificate(good) == []
    assert lint_certificate(bad) == first
