"""The key types privca generates and uses in a token, and how each one signs."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from pkcs11 import KeyType, Mechanism

from hsm.errors import HSMError
from hsm.signer import ECDSA_WITH_SHA256, ECDSA_WITH_SHA384, ED25519, SHA256_WITH_RSA

# DER-encoded curve OIDs as CKA_EC_PARAMS carries them (X9.62 namedCurve; RFC 8410 for Ed25519).
P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")  # 1.2.840.10045.3.1.7
P384_PARAMS = bytes.fromhex("06052b81040022")  # 1.3.132.0.34
ED25519_PARAMS = bytes.fromhex("06032b6570")  # 1.3.101.112
# PKCS#11 3.0 also allows the curve as a PrintableString; some modules report it that way.
ED25519_PARAMS_PRINTABLE = bytes.fromhex("130c656477617264733235353139")  # "edwards25519"


@dataclass(frozen=True)
class KeySpec:
    """One supported key type: its name, its PKCS#11 shape and its X.509 signature algorithm."""

    name: str
    pkcs11_key_type: KeyType
    generate_mechanism: Mechanism
    algorithm: str
    hash_algorithm: type[hashes.HashAlgorithm] | None
    rsa_bits: int | None = None
    ec_params: bytes | None = None

    def new_hash(self) -> hashes.HashAlgorithm | None:
        return self.hash_algorithm() if self.hash_algorithm is not None else None


def _rsa(bits: int) -> KeySpec:
    return KeySpec(
        f"rsa-{bits}",
        KeyType.RSA,
        Mechanism.RSA_PKCS_KEY_PAIR_GEN,
        SHA256_WITH_RSA,
        hashes.SHA256,
        rsa_bits=bits,
    )


KEY_TYPES: dict[str, KeySpec] = {
    spec.name: spec
    for spec in (
        _rsa(2048),
        _rsa(3072),
        _rsa(4096),
        KeySpec(
            "ec-p256",
            KeyType.EC,
            Mechanism.EC_KEY_PAIR_GEN,
            ECDSA_WITH_SHA256,
            hashes.SHA256,
            ec_params=P256_PARAMS,
        ),
        KeySpec(
            "ec-p384",
            KeyType.EC,
            Mechanism.EC_KEY_PAIR_GEN,
            ECDSA_WITH_SHA384,
            hashes.SHA384,
            ec_params=P384_PARAMS,
        ),
        KeySpec(
            "ed25519",
            KeyType.EC_EDWARDS,
            Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            ED25519,
            None,
            ec_params=ED25519_PARAMS,
        ),
    )
}


def key_spec(key_type: str) -> KeySpec:
    """The spec for a key type name such as "ec-p256"; HSMError names the supported ones."""
    try:
        return KEY_TYPES[key_type]
    except KeyError:
        raise HSMError(
            f"unsupported key type {key_type!r}; supported: {', '.join(KEY_TYPES)}"
        ) from None


def key_spec_for(
    pkcs11_key_type: KeyType, ec_params: bytes | None, rsa_bits: int | None
) -> KeySpec:
    """The spec matching a key found in a token; HSMError if privca does not use such keys."""
    if pkcs11_key_type == KeyType.RSA and rsa_bits is not None:
        name = f"rsa-{rsa_bits}"
    elif pkcs11_key_type == KeyType.EC and ec_params == P256_PARAMS:
        name = "ec-p256"
    elif pkcs11_key_type == KeyType.EC and ec_params == P384_PARAMS:
        name = "ec-p384"
    elif pkcs11_key_type == KeyType.EC_EDWARDS and ec_params in (
        ED25519_PARAMS,
        ED25519_PARAMS_PRINTABLE,
    ):
        name = "ed25519"
    else:
        name = ""
    if name not in KEY_TYPES:
        raise HSMError(
            f"the token key is of a type privca does not use (key type {pkcs11_key_type!r}); "
            f"supported: {', '.join(KEY_TYPES)}"
        )
    return KEY_TYPES[name]
