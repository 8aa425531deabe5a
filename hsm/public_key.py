"""Public keys read from token attributes, and the check that a token key is the expected one."""

from __future__ import annotations

from asn1crypto.core import OctetString
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPublicKeyTypes,
    PublicKeyTypes,
)

from hsm.errors import HSMError, KeyMismatch
from hsm.key_types import KeySpec
from hsm.signer import (
    ECDSA_WITH_SHA256,
    ECDSA_WITH_SHA384,
    ED25519,
    SHA256_WITH_RSA,
    SHA384_WITH_RSA,
    Signer,
)

_CURVES: dict[str, ec.EllipticCurve] = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}


def _point(ec_point: bytes, raw_length: int) -> bytes:
    # PKCS#11 says CKA_EC_POINT is a DER OCTET STRING, but some modules hand back the raw point.
    if len(ec_point) == raw_length:
        return ec_point
    try:
        point = OctetString.load(ec_point).native
    except ValueError as exc:
        raise HSMError("the token returned a malformed CKA_EC_POINT") from exc
    if not isinstance(point, bytes) or len(point) != raw_length:
        raise HSMError("the token returned a CKA_EC_POINT of unexpected length")
    return point


def public_key_from_attributes(
    spec: KeySpec,
    *,
    modulus: bytes | None = None,
    public_exponent: bytes | None = None,
    ec_point: bytes | None = None,
) -> CertificateIssuerPublicKeyTypes:
    """Build a cryptography public key from CKA_MODULUS/CKA_PUBLIC_EXPONENT or CKA_EC_POINT."""
    if spec.rsa_bits is not None:
        if modulus is None or public_exponent is None:
            raise HSMError("the token did not return the RSA public key")
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(public_exponent, "big"), int.from_bytes(modulus, "big")
        )
        return numbers.public_key()
    if ec_point is None:
        raise HSMError("the token did not return CKA_EC_POINT")
    if spec.name == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_point(ec_point, 32))
    curve = _CURVES[spec.name]
    # An uncompressed X9.62 point: 0x04 || X || Y.
    raw_length = 1 + 2 * ((curve.key_size + 7) // 8)
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, _point(ec_point, raw_length))
    except ValueError as exc:
        raise HSMError("the token returned an EC point that is not on the curve") from exc


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_matches(signer: Signer, public_key: PublicKeyTypes) -> None:
    """Raise KeyMismatch unless `signer`'s public key is `public_key` (compared as SPKI DER)."""
    if _spki(signer.public_key) != _spki(public_key):
        raise KeyMismatch(f"the public key of {signer.key_uri} does not match the expected key")


def signature_valid(public_key: object, algorithm: str, signature: bytes, message: bytes) -> bool:
    """Whether `signature` (X.509 form, as Signer.sign returns it) is `algorithm` over `message`."""
    try:
        if algorithm in (SHA256_WITH_RSA, SHA384_WITH_RSA) and isinstance(
            public_key, rsa.RSAPublicKey
        ):
            digest = hashes.SHA256() if algorithm == SHA256_WITH_RSA else hashes.SHA384()
            public_key.verify(signature, message, padding.PKCS1v15(), digest)
        elif algorithm in (ECDSA_WITH_SHA256, ECDSA_WITH_SHA384) and isinstance(
            public_key, ec.EllipticCurvePublicKey
        ):
            digest = hashes.SHA256() if algorithm == ECDSA_WITH_SHA256 else hashes.SHA384()
            public_key.verify(signature, message, ec.ECDSA(digest))
        elif algorithm == ED25519 and isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True
