"""The cryptography private-key adapters, with a software Signer standing in for the token."""

from __future__ import annotations

import copy

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from hsm import HSMError, KeyNotExportable
from hsm.private_key import private_key_adapter
from tests.support.software_signer import SoftwareSigner


def test_adapters_are_cryptography_private_keys_of_the_right_kind() -> None:
    assert isinstance(private_key_adapter(SoftwareSigner("rsa-2048")), rsa.RSAPrivateKey)
    assert isinstance(private_key_adapter(SoftwareSigner("ec-p384")), ec.EllipticCurvePrivateKey)
    assert isinstance(private_key_adapter(SoftwareSigner("ed25519")), ed25519.Ed25519PrivateKey)


def test_rsa_adapter_signs_pkcs1v15_with_the_signer_hash_only() -> None:
    signer = SoftwareSigner("rsa-2048")
    key = private_key_adapter(signer)
    assert isinstance(key, rsa.RSAPrivateKey)

    signature = key.sign(b"data", padding.PKCS1v15(), hashes.SHA256())
    signer.public_key.verify(signature, b"data", padding.PKCS1v15(), hashes.SHA256())
    assert key.key_size == 2048
    with pytest.raises(HSMError, match=r"PKCS#1 v1\.5"):
        key.sign(b"data", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    with pytest.raises(HSMError, match="sha512"):
        key.sign(b"data", padding.PKCS1v15(), hashes.SHA512())


def test_ec_adapter_signs_ecdsa_with_the_signer_hash_only() -> None:
    signer = SoftwareSigner("ec-p384")
    key = private_key_adapter(signer)
    assert isinstance(key, ec.EllipticCurvePrivateKey)

    signature = key.sign(b"data", ec.ECDSA(hashes.SHA384()))
    signer.public_key.verify(signature, b"data", ec.ECDSA(hashes.SHA384()))
    assert key.curve.name == "secp384r1" and key.key_size == 384
    with pytest.raises(HSMError, match="sha256"):
        key.sign(b"data", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(HSMError, match="deterministic"):
        key.sign(b"data", ec.ECDSA(hashes.SHA384(), deterministic_signing=True))


def test_ed25519_adapter_signs_the_whole_message() -> None:
    signer = SoftwareSigner("ed25519")
    key = private_key_adapter(signer)
    assert isinstance(key, ed25519.Ed25519PrivateKey)

    signer.public_key.verify(key.sign(b"data"), b"data")


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p256", "ed25519"])
def test_key_material_is_never_available(key_type: str) -> None:
    key = private_key_adapter(SoftwareSigner(key_type, label="ca"))

    with pytest.raises(KeyNotExportable, match="software:ca"):
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    if isinstance(key, rsa.RSAPrivateKey):
        with pytest.raises(KeyNotExportable):
            key.private_numbers()
        with pytest.raises(KeyNotExportable):
            key.decrypt(b"x", padding.PKCS1v15())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        with pytest.raises(KeyNotExportable):
            key.private_numbers()
        with pytest.raises(KeyNotExportable):
            key.exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key())
    else:
        with pytest.raises(KeyNotExportable):
            key.private_bytes_raw()
    assert copy.copy(key) is key
    assert copy.deepcopy(key) is key
