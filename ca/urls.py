"""The public URLs that certificates point at (CDP, AIA) and that front ends advertise."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublicURLs:
    """Built from `server.public_base_url`; every node must agree on it (it is in certificates)."""

    base: str

    def crl(self, issuer: str) -> str:
        return f"{self.base}/crl/{issuer}.crl"

    def ca_certificate(self, issuer: str) -> str:
        return f"{self.base}/ca/{issuer}.crt"

    def ocsp(self) -> str:
        return f"{self.base}/ocsp"

    def acme_directory(self) -> str:
        return f"{self.base}/acme/directory"

    def est(self) -> str:
        return f"{self.base}/.well-known/est/"

    def admin_api(self) -> str:
        return f"{self.base}/api/v1"
