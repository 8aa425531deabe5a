"""The Signer contract: whole message in, X.509-form signature out. No certificate knowledge."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.hashes import HashAlgorithm

# Signature algorithm names as X.509 calls them; the value of Signer.algorithm.
SHA256_WITH_RSA = "sha256WithRSAEncryption"
SHA384_WITH_RSA = "sha384WithRSAEncryption"
ECDSA_WITH_SHA256 = "ecdsa-with-SHA256"
ECDSA_WITH_SHA384 = "ecdsa-with-SHA384"
ED25519 = "Ed25519"


@runtime_checkable
class Signer(Protocol):
    """A key that signs. `key_uri` is an RFC 7512 URI (never a PIN) and safe to log."""

    key_uri: str
    public_key: CertificateIssuerPublicKeyTypes
    algorithm: str

    @property
    def hash_algorithm(self) -> HashAlgorithm | None:
        """The digest the signature uses (None for Ed25519), as cryptography's builders want it."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Sign the whole message; ECDSA signatures come back DER-encoded (X.509 form)."""
        ...
