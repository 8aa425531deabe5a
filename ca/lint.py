"""pkilint: RFC 5280 certificate and CRL checks and RFC 6960 OCSP response checks.

Used by pre-issuance lint (a profile's `lint = "warn" | "enforce"`) and by the test suite.

Validators are built the way pkilint's own CLIs build them (lint_pkix_cert, lint_crl with the
PKIX profile, lint_ocsp_response) and only once per process: building them costs far more than
linting one document, and the suite lints hundreds. Findings at ERROR severity or worse come back
as strings "<code> (<SEVERITY>) at <node path>: <message>".
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from pkilint import loader, pkix
from pkilint.document import Document
from pkilint.pkix import certificate, crl, extension, name, ocsp
from pkilint.validation import ValidationFindingSeverity, ValidationResult, Validator

__all__ = ["lint_certificate", "lint_crl", "lint_ocsp_response"]

# FATAL (0) and ERROR (1): the "MUST" violations; WARNING and below are advice.
_THRESHOLD = ValidationFindingSeverity.ERROR

# pkilint promises nothing about sharing a validator between threads; one lock keeps the
# threaded server (pre-issuance lint) from finding out the hard way.
_LOCK = threading.Lock()


@functools.cache
def _certificate_validator() -> Validator:
    # lint_pkix_cert uses this one container for CA and end-entity certificates alike: the
    # RFC 5280 rules that differ (basicConstraints, keyCertSign, AKI on self-signed) are
    # decided inside the validators from the certificate's own extensions.
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


@functools.cache
def _crl_validator() -> Validator:
    # lint_crl's PKIX profile; its CRL/ARL switch only matters for the CA/B Forum profile.
    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container([]),
            crl.create_extensions_validator_container([]),
        ],
    )


@functools.cache
def _ocsp_response_validator() -> Validator:
    return ocsp.create_pkix_ocsp_response_validator_container(
        [
            ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )


def _format(results: list[ValidationResult]) -> list[str]:
    findings = []
    for result in results:
        for description in result.finding_descriptions:
            finding = description.finding
            if finding.severity > _THRESHOLD:
                continue
            text = f"{finding.code} ({finding.severity.name}) at {result.node.path}"
            if description.message:
                text += f": {description.message}"
            findings.append(text)
    return findings


def _lint(
    der: bytes,
    load: Callable[[bytes, str], Document],
    validator: Callable[[], Validator],
    what: str,
) -> list[str]:
    if not isinstance(der, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be DER bytes, got {type(der).__name__}")
    try:
        document = load(bytes(der), what)
    except ValueError as exc:
        # Undecodable DER is the worst finding there is; reporting it keeps the assert_ helpers
        # one call for the test instead of two.
        return [f"pkilint.decoding_failed (FATAL) at {what}: {exc}"]
    with _LOCK:
        results = validator().validate(document.root)
    return _format(results)


def lint_certificate(der: bytes) -> list[str]:
    """ERROR-or-worse pkilint findings for a DER certificate under the RFC 5280 profile.

    One finding is dropped: pkilint's PKIX profile calls a leftmost "*" label invalid DNS name
    syntax (RFC 5280 leaves wildcards undefined), while RFC 6125 §6.4.3 and the CA/B Forum
    profile accept it and ACME issues it (through dns-01, under the policy engine's rules).
    """
    findings = _lint(
        der,
        loader.RFC5280CertificateDocumentLoader().load_der_document,
        _certificate_validator,
        "certificate",
    )
    return [f for f in findings if not _is_leftmost_wildcard_finding(f)]


def _is_leftmost_wildcard_finding(finding: str) -> bool:
    return finding.startswith("pkix.invalid_domain_name_syntax") and 'syntax: "*.' in finding


def lint_crl(der: bytes) -> list[str]:
    """ERROR-or-worse pkilint findings for a DER CRL under the RFC 5280 (PKIX) profile."""
    return _lint(
        der,
        loader.RFC5280CertificateListDocumentLoader().load_der_document,
        _crl_validator,
        "crl",
    )


def lint_ocsp_response(der: bytes) -> list[str]:
    """ERROR-or-worse pkilint findings for a DER OCSPResponse under RFC 6960."""
    return _lint(
        der,
        loader.RFC6960OCSPResponseDocumentLoader().load_der_document,
        _ocsp_response_validator,
        "ocspResponse",
    )
