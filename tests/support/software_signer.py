"""A software Signer for `ca` unit tests (the contract of hsm.signer.Signer, keys in memory)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from hsm.signer import ECDSA_WITH_SHA256, ECDSA_WITH_SHA384, ED25519, SHA256_WITH_RSA


class SoftwareSigner:
    def __init__(self, key_type: str = "ec-p256", label: str = "test") -> None:
        self.key_uri = f"software:{label}"
        self.private_key: CertificateIssuerPrivateKeyTypes
        if key_type == "ec-p256":
            self.private_key = ec.generate_private_key(ec.SECP256R1())
            self.algorithm, self._hash = ECDSA_WITH_SHA256, hashes.SHA256()
        elif key_type == "ec-p384":
            self.private_key = ec.generate_private_key(ec.SECP384R1())
            self.algorithm, self._hash = ECDSA_WITH_SHA384, hashes.SHA384()
        elif key_type.startswith("rsa-"):
            self.private_key = rsa.generate_private_key(65537, int(key_type[4:]))
            self.algorithm, self._hash = SHA256_WITH_RSA, hashes.SHA256()
        elif key_type == "ed25519":
            self.private_key = ed25519.Ed25519PrivateKey.generate()
            self.algorithm, self._hash = ED25519, None
        else:
            raise ValueError(key_type)
        self.public_key = self.private_key.public_key()

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm | None:
        return self._hash

    def sign(self, data: bytes) -> bytes:
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(self._hash))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), self._hash)
        return key.sign(data)
