"""The public URLs that certificates point at (CDP, AIA) and that front ends advertise."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublicURLs:
    """Built from `server.public_base_url` and `server.revocation_base_url`; every node must agree
    on them, since they are written into certificates.

    CRL, OCSP and CA certificate URLs use the revocation base: relying parties fetch them before
    they trust anything, so they are usually plain http (RFC 5280 §4.2.1.13, RFC 5019), served
    by a cache, a CDN or a plain-HTTP front in front of privca.
    """

    base: str
    revocation_base: str = ""

    @property
    def revocation(self) -> str:
        return self.revocation_base or self.base

    def crl(self, issuer: str) -> str:
        return f"{self.revocation}/crl/{issuer}.crl"

    def ca_certificate(self, issuer: str) -> str:
        return f"{self.revocation}/ca/{issuer}.crt"

    def ocsp(self) -> str:
        return f"{self.revocation}/ocsp"

    def acme_directory(self) -> str:
        return f"{self.base}/acme/directory"

    def est(self) -> str:
        return f"{self.base}/.well-known/est/"

    def admin_api(self) -> str:
        return f"{self.base}/api/v1"
