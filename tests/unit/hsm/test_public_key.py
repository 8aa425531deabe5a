"""Public keys from token attributes, and the key-match check."""

from __future__ import annotations

import pytest
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hsm import HSMError, KeyMismatch, verify_matches
from hsm.key_types import KEY_TYPES, key_spec, key_spec_for
from hsm.public_key import public_key_from_attributes
from tests.support.software_signer import SoftwareSigner

RAW = serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384"])
@pytest.mark.parametrize("der_wrapped", [True, False])
def test_ec_point_is_read_der_wrapped_or_raw(key_type: str, der_wrapped: bool) -> None:
    curve = ec.SECP256R1() if key_type == "ec-p256" else ec.SECP384R1()
    expected = ec.generate_private_key(curve).public_key()
    point = expected.public_bytes(*RAW)
    attribute = OctetString(point).dump() if der_wrapped else point

    assert public_key_from_attributes(key_spec(key_type), ec_point=attribute) == expected


def test_ed25519_point_is_read() -> None:
    expected = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = expected.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    for attribute in (raw, OctetString(raw).dump()):
        assert public_key_from_attributes(key_spec("ed25519"), ec_point=attribute) == expected


def test_rsa_public_key_is_read_from_modulus_and_exponent() -> None:
    expected = rsa.generate_private_key(65537, 2048).public_key()
    numbers = expected.public_numbers()

    built = public_key_from_attributes(
        key_spec("rsa-2048"),
        modulus=numbers.n.to_bytes(256, "big"),
        public_exponent=b"\x01\x00\x01",
    )

    assert built == expected


def test_point_off_the_curve_is_an_hsm_error() -> None:
    bogus = b"\x04" + b"\x01" * 64
    with pytest.raises(HSMError):
        public_key_from_attributes(key_spec("ec-p256"), ec_point=bogus)


def test_unsupported_token_keys_are_named() -> None:
    from pkcs11 import KeyType

    assert key_spec_for(KeyType.RSA, None, 3072) is KEY_TYPES["rsa-3072"]
    with pytest.raises(HSMError, match="does not use"):
        key_spec_for(KeyType.RSA, None, 1024)
    with pytest.raises(HSMError, match="does not use"):
        key_spec_for(KeyType.EC, bytes.fromhex("06052b8104000a"), None)  # secp256k1


def test_verify_matches_accepts_the_same_key_and_names_the_uri_otherwise() -> None:
    signer = SoftwareSigner("ec-p256", label="issuing")

    verify_matches(signer, signer.public_key)
    with pytest.raises(KeyMismatch, match="software:issuing"):
        verify_matches(signer, SoftwareSigner("ec-p256").public_key)
    with pytest.raises(KeyMismatch):
        verify_matches(signer, SoftwareSigner("rsa-2048").public_key)
