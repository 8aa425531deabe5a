"""Keys in a real SoftHSM token: generation, protection attributes, lookup, signing, errors."""

from __future__ import annotations

import re

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from hsm import (
    HSMError,
    HSMSigner,
    KeyExists,
    KeyMismatch,
    KeyNotFound,
    PINIncorrect,
    Signer,
    Token,
    TokenNotFound,
    verify_matches,
)
from hsm.signer import ECDSA_WITH_SHA256, ECDSA_WITH_SHA384, ED25519, SHA256_WITH_RSA
from tests.integration.hsm_fixtures import SoftHSMToken, softhsm_token  # noqa: F401

pytestmark = pytest.mark.integration

MESSAGE = b"to be signed by the token " * 40


def verify(signer: HSMSigner, signature: bytes, data: bytes) -> None:
    """Verify with cryptography the way an X.509 relying party would (raises InvalidSignature)."""
    public_key = signer.public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(signer.hash_algorithm))
    else:
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        public_key.verify(signature, data)


def generate_or_skip(token: Token, key_type: str, label: str) -> HSMSigner:
    try:
        return token.generate_key(key_type, label)
    except HSMError as exc:
        if key_type == "ed25519" and "does not offer" in str(exc):
            pytest.skip(f"this SoftHSM build has no Ed25519: {exc}")
        raise


@pytest.mark.parametrize(
    ("key_type", "algorithm", "public_type", "hash_name"),
    [
        ("rsa-2048", SHA256_WITH_RSA, rsa.RSAPublicKey, "sha256"),
        ("rsa-3072", SHA256_WITH_RSA, rsa.RSAPublicKey, "sha256"),
        ("ec-p256", ECDSA_WITH_SHA256, ec.EllipticCurvePublicKey, "sha256"),
        ("ec-p384", ECDSA_WITH_SHA384, ec.EllipticCurvePublicKey, "sha384"),
        ("ed25519", ED25519, ed25519.Ed25519PublicKey, None),
    ],
)
def test_generated_key_signs_and_cryptography_verifies(
    softhsm_token: SoftHSMToken,  # noqa: F811
    key_type: str,
    algorithm: str,
    public_type: type,
    hash_name: str | None,
) -> None:
    token = softhsm_token.token()
    signer = generate_or_skip(token, key_type, f"ca-{key_type}")

    assert isinstance(signer, Signer)
    assert signer.key_type == key_type
    assert signer.algorithm == algorithm
    assert isinstance(signer.public_key, public_type)
    assert (signer.hash_algorithm.name if signer.hash_algorithm else None) == hash_name
    if key_type.startswith("rsa-"):
        assert signer.public_key.key_size == int(key_type[4:])
    for data in (MESSAGE, b"", b"x"):
        verify(signer, signer.sign(data), data)
    with pytest.raises(InvalidSignature):
        verify(signer, signer.sign(MESSAGE), MESSAGE + b"!")


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p256", "ec-p384", "ed25519"])
def test_found_signer_is_the_generated_key(
    softhsm_token: SoftHSMToken,  # noqa: F811
    key_type: str,
) -> None:
    token = softhsm_token.token()
    generated = generate_or_skip(token, key_type, "issuing")

    other_handle = softhsm_token.token()
    found = other_handle.find_signer("issuing")
    by_id = other_handle.find_signer("issuing", generated.key_id)

    for signer in (found, by_id):
        assert signer.key_type == key_type
        assert signer.key_id == generated.key_id
        assert signer.key_uri == generated.key_uri
        verify_matches(signer, generated.public_key)
        verify(generated, signer.sign(MESSAGE), MESSAGE)


def test_key_uri_names_token_object_and_id_and_never_the_pin(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    signer = softhsm_token.token().generate_key("ec-p256", "root 2025", key_id=b"\x01\xab\xff")

    assert signer.key_uri == (
        f"pkcs11:token={softhsm_token.label};object=root%202025;id=%01%ab%ff;type=private"
    )
    assert softhsm_token.pin not in signer.key_uri
    assert softhsm_token.pin not in repr(signer)


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p256", "ed25519"])
def test_generated_private_key_is_sensitive_and_never_extractable(
    softhsm_token: SoftHSMToken,  # noqa: F811
    key_type: str,
) -> None:
    token = softhsm_token.token()
    generate_or_skip(token, key_type, "protected")

    assert token.key_attributes("protected") == {
        "token": True,
        "private": True,
        "sensitive": True,
        "extractable": False,
        "always_sensitive": True,
        "never_extractable": True,
    }


def test_generate_refuses_an_existing_label_and_keeps_the_old_key(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    token = softhsm_token.token()
    first = token.generate_key("ec-p256", "issuing")

    with pytest.raises(KeyExists, match="issuing"):
        token.generate_key("ec-p256", "issuing")
    with pytest.raises(KeyExists, match="issuing"):
        token.generate_key("rsa-2048", "issuing")

    kept = token.find_signer("issuing")
    verify_matches(kept, first.public_key)
    assert kept.key_id == first.key_id


def test_generate_refuses_an_existing_key_id(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    token = softhsm_token.token()
    token.generate_key("ec-p256", "first", key_id=b"same-id")

    with pytest.raises(KeyExists, match="id"):
        token.generate_key("ec-p256", "second", key_id=b"same-id")
    assert not token.has_key("second")


def test_missing_key_raises_key_not_found(softhsm_token: SoftHSMToken) -> None:  # noqa: F811
    token = softhsm_token.token()
    token.generate_key("ec-p256", "present", key_id=b"\x01")

    assert token.has_key("present")
    assert not token.has_key("absent")
    with pytest.raises(KeyNotFound, match="absent"):
        token.find_signer("absent")
    with pytest.raises(KeyNotFound):
        token.find_signer("present", key_id=b"\x02")
    with pytest.raises(KeyNotFound):
        token.key_attributes("absent")


def test_unknown_key_type_is_refused(softhsm_token: SoftHSMToken) -> None:  # noqa: F811
    with pytest.raises(HSMError, match="unsupported key type 'dsa-1024'"):
        softhsm_token.token().generate_key("dsa-1024", "k")


def test_wrong_pin_raises_pin_incorrect_without_the_pin(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    wrong = "wrong-" + softhsm_token.pin[::-1]
    token = Token(softhsm_token.module_path, softhsm_token.label, lambda: wrong)

    with pytest.raises(PINIncorrect) as caught:
        token.ping()

    chain: list[BaseException] = []
    exc: BaseException | None = caught.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for link in chain:
        assert wrong not in str(link) and wrong not in repr(link)
        assert softhsm_token.pin not in str(link)


def test_wrong_pin_is_refused_even_while_another_handle_is_logged_in(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    # C_Login would answer CKR_USER_ALREADY_LOGGED_IN without looking at this PIN.
    logged_in = softhsm_token.token()
    logged_in.generate_key("ec-p256", "issuing")
    intruder = Token(softhsm_token.module_path, softhsm_token.label, lambda: "not-the-pin")

    with pytest.raises(PINIncorrect):
        intruder.find_signer("issuing")
    assert softhsm_token.token().find_signer("issuing").sign(b"ok")


def test_unknown_token_label_raises_token_not_found(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    token = Token(softhsm_token.module_path, "no-such-token", lambda: softhsm_token.pin)

    with pytest.raises(TokenNotFound, match="no-such-token"):
        token.ping()


def test_ping_succeeds_on_a_reachable_token(softhsm_token: SoftHSMToken) -> None:  # noqa: F811
    softhsm_token.token().ping()


def test_signer_key_mismatch_is_detected(softhsm_token: SoftHSMToken) -> None:  # noqa: F811
    token = softhsm_token.token()
    issuing = token.generate_key("ec-p256", "issuing")
    other = token.generate_key("ec-p256", "other")

    verify_matches(issuing, issuing.public_key)
    with pytest.raises(KeyMismatch, match=re.escape(issuing.key_uri)):
        verify_matches(issuing, other.public_key)
    with pytest.raises(KeyMismatch):
        verify_matches(issuing, rsa.generate_private_key(65537, 2048).public_key())


def test_closed_handle_opens_again_on_next_use(softhsm_token: SoftHSMToken) -> None:  # noqa: F811
    token = softhsm_token.token()
    signer = token.generate_key("ec-p256", "issuing")
    token.close()
    token.close()

    verify(signer, signer.sign(MESSAGE), MESSAGE)


def test_closing_one_handle_leaves_another_logged_in(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    first, second = softhsm_token.token(), softhsm_token.token()
    signer = first.generate_key("ec-p256", "issuing")
    from_second = second.find_signer("issuing")

    first.close()

    verify(signer, from_second.sign(MESSAGE), MESSAGE)
