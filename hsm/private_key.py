"""cryptography private-key objects whose `sign()` goes to a Signer (and so to the token).

cryptography's certificate, CRL and OCSP builders accept any subclass of its private-key
interfaces and call its Python `sign()`; these adapters let the core keep using those builders
while the key stays in the token. Everything that would need key material raises
KeyNotExportable.
"""

from __future__ import annotations

from typing import Self

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding, PKCS1v15
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from hsm.errors import HSMError, KeyNotExportable
from hsm.signer import Signer


def _refuse(signer: Signer, what: str) -> KeyNotExportable:
    return KeyNotExportable(
        f"{what} is not available for {signer.key_uri}: the key stays in the token"
    )


def _check_hash(signer: Signer, algorithm: hashes.HashAlgorithm | Prehashed | None) -> None:
    expected = signer.hash_algorithm
    if expected is None or not isinstance(algorithm, hashes.HashAlgorithm):
        raise HSMError(f"{signer.key_uri} signs {signer.algorithm} only; got hash {algorithm!r}")
    if algorithm.name != expected.name:
        raise HSMError(f"{signer.key_uri} signs {signer.algorithm} only; got hash {algorithm.name}")


class _TokenKey:
    """What every adapter shares: the signer, refusals of key material, copies as itself."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise _refuse(self._signer, "private_bytes()")

    # A copy of a handle on a token key is the same handle.
    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict) -> Self:
        return self


class TokenRSAPrivateKey(_TokenKey, rsa.RSAPrivateKey):
    """An RSA key in a token: PKCS#1 v1.5 signatures with the signer's hash only."""

    def sign(
        self,
        data: bytes,
        padding: AsymmetricPadding,
        algorithm: hashes.HashAlgorithm | Prehashed,
    ) -> bytes:
        if not isinstance(padding, PKCS1v15):
            raise HSMError(
                f"{self._signer.key_uri} signs {self._signer.algorithm} (PKCS#1 v1.5) only; "
                f"got padding {padding.name}"
            )
        _check_hash(self._signer, algorithm)
        return self._signer.sign(bytes(data))

    @property
    def key_size(self) -> int:
        return self.public_key().key_size

    def public_key(self) -> rsa.RSAPublicKey:
        public_key = self._signer.public_key
        assert isinstance(public_key, rsa.RSAPublicKey)
        return public_key

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise _refuse(self._signer, "RSA decryption")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise _refuse(self._signer, "private_numbers()")


class TokenECPrivateKey(_TokenKey, ec.EllipticCurvePrivateKey):
    """An EC key in a token: ECDSA with the signer's hash only (DER signatures)."""

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise HSMError(
                f"{self._signer.key_uri} signs {self._signer.algorithm} only; "
                f"got {signature_algorithm!r}"
            )
        if signature_algorithm.deterministic_signing:
            raise HSMError("deterministic ECDSA (RFC 6979) is not offered by the token")
        _check_hash(self._signer, signature_algorithm.algorithm)
        return self._signer.sign(bytes(data))

    @property
    def curve(self) -> ec.EllipticCurve:
        return self.public_key().curve

    @property
    def key_size(self) -> int:
        return self.public_key().key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        public_key = self._signer.public_key
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        return public_key

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise _refuse(self._signer, "ECDH key exchange")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise _refuse(self._signer, "private_numbers()")


class TokenEd25519PrivateKey(_TokenKey, ed25519.Ed25519PrivateKey):
    """An Ed25519 key in a token (pure EdDSA over the whole message)."""

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(bytes(data))

    def public_key(self) -> ed25519.Ed25519PublicKey:
        public_key = self._signer.public_key
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        return public_key

    def private_bytes_raw(self) -> bytes:
        raise _refuse(self._signer, "private_bytes_raw()")


def private_key_adapter(signer: Signer) -> CertificateIssuerPrivateKeyTypes:
    """A cryptography private key whose sign() calls `signer.sign`; pick by its public key type."""
    public_key = signer.public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        return TokenRSAPrivateKey(signer)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return TokenECPrivateKey(signer)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return TokenEd25519PrivateKey(signer)
    raise HSMError(f"no private-key adapter for a {type(public_key).__name__} ({signer.key_uri})")
