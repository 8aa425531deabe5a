"""HSMSigner: a private key in a token, signing whole messages into X.509-form signatures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import KeyType, Mechanism

from hsm.key_types import KeySpec
from hsm.private_key import private_key_adapter
from hsm.uri import private_key_uri

if TYPE_CHECKING:
    from pkcs11 import Session
    from pkcs11.types import PrivateKey

    from hsm.token import Token


def signing_mechanism(spec: KeySpec) -> Mechanism:
    """The mechanism a key of this spec signs with in the token."""
    if spec.pkcs11_key_type == KeyType.RSA:
        return Mechanism.SHA256_RSA_PKCS
    if spec.pkcs11_key_type == KeyType.EC:
        # Debian's SoftHSM has no CKM_ECDSA_SHA256/384: hash here, sign the digest there.
        return Mechanism.ECDSA
    return Mechanism.EDDSA


class HSMSigner:
    """A token key implementing hsm.signer.Signer. Thread-safe and usable after fork()."""

    def __init__(
        self,
        token: Token,
        spec: KeySpec,
        label: str,
        key_id: bytes,
        public_key: CertificateIssuerPublicKeyTypes,
    ) -> None:
        self.key_type = spec.name
        self.label = label
        self.key_id = key_id
        self.public_key = public_key
        self.algorithm = spec.algorithm
        self.key_uri = private_key_uri(token.token_label, label, key_id)
        self._token = token
        self._spec = spec
        self._mechanism = signing_mechanism(spec)
        # The key object found on a given session; found again when the session changes.
        self._key: tuple[Session, PrivateKey] | None = None

    def __repr__(self) -> str:
        return f"HSMSigner({self.key_uri!r}, {self.algorithm})"

    @property
    def hash_algorithm(self) -> hashes.HashAlgorithm | None:
        return self._spec.new_hash()

    def sign(self, data: bytes) -> bytes:
        """Sign the whole message; ECDSA comes back DER-encoded. Raises HSMError."""
        data = bytes(data)
        if self._spec.pkcs11_key_type != KeyType.EC:
            return self._token.run(lambda session: self._sign(session, data))
        hasher = hashes.Hash(self._spec.new_hash())  # type: ignore[arg-type]
        hasher.update(data)
        digest = hasher.finalize()
        raw = self._token.run(lambda session: self._sign(session, digest))
        # PKCS#11 returns r || s, each as long as the group order; X.509 wants Ecdsa-Sig-Value.
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def _sign(self, session: Session, data: bytes) -> bytes:
        return self._private_key(session).sign(data, mechanism=self._mechanism)

    def _private_key(self, session: Session) -> PrivateKey:
        if self._key is None or self._key[0] is not session:
            self._key = (session, self._token.find_private_key(session, self.label, self.key_id))
        return self._key[1]

    def as_private_key(self) -> CertificateIssuerPrivateKeyTypes:
        """A cryptography private key whose sign() goes to the token, for cryptography's builders.

        It accepts only this signer's algorithm (PKCS#1 v1.5 or ECDSA with the signer's hash);
        anything that would read key material raises KeyNotExportable.
        """
        return private_key_adapter(self)
