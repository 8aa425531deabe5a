"""pkilint assertions for tests; the linting itself is ca.lint (shared with pre-issuance lint)."""

from __future__ import annotations

import ssl
from os import PathLike
from pathlib import Path

from ca.lint import lint_certificate, lint_crl, lint_ocsp_response

__all__ = [
    "assert_lints_clean_certificate",
    "assert_lints_clean_crl",
    "assert_lints_clean_ocsp_response",
    "lint_certificate",
    "lint_certificate_file",
    "lint_crl",
    "lint_ocsp_response",
]


def lint_certificate_file(path: str | PathLike[str]) -> list[str]:
    """Like lint_certificate for a file holding one certificate in DER or PEM."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        # The stdlib only strips the armour; a parser would refuse the malformed ones we lint.
        data = ssl.PEM_cert_to_DER_cert(data.decode("ascii").strip())
    return lint_certificate(data)


def _raise_if_any(findings: list[str], what: str) -> None:
    if findings:
        listing = "\n  ".join(findings)
        raise AssertionError(
            f"pkilint reports {len(findings)} error(s) in the {what}:\n  {listing}"
        )


def assert_lints_clean_certificate(der: bytes) -> None:
    """Raise AssertionError listing every ERROR-or-worse pkilint finding for the certificate."""
    _raise_if_any(lint_certificate(der), "certificate")


def assert_lints_clean_crl(der: bytes) -> None:
    """Raise AssertionError listing every ERROR-or-worse pkilint finding for the CRL."""
    _raise_if_any(lint_crl(der), "CRL")


def assert_lints_clean_ocsp_response(der: bytes) -> None:
    """Raise AssertionError listing every ERROR-or-worse pkilint finding for the OCSP response."""
    _raise_if_any(lint_ocsp_response(der), "OCSP response")
