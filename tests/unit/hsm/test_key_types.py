"""The supported key types and what each signs with."""

from __future__ import annotations

import pytest

from hsm import HSMError
from hsm.key_types import KEY_TYPES, key_spec
from hsm.signer import ECDSA_WITH_SHA256, ECDSA_WITH_SHA384, ED25519, SHA256_WITH_RSA


def test_each_key_type_has_its_x509_algorithm_and_hash() -> None:
    expected = {
        "rsa-2048": (SHA256_WITH_RSA, "sha256"),
        "rsa-3072": (SHA256_WITH_RSA, "sha256"),
        "rsa-4096": (SHA256_WITH_RSA, "sha256"),
        "ec-p256": (ECDSA_WITH_SHA256, "sha256"),
        "ec-p384": (ECDSA_WITH_SHA384, "sha384"),
        "ed25519": (ED25519, None),
    }
    actual = {}
    for name, spec in KEY_TYPES.items():
        digest = spec.new_hash()
        actual[name] = (spec.algorithm, digest.name if digest else None)
    assert actual == expected


def test_unknown_key_type_lists_the_supported_ones() -> None:
    with pytest.raises(HSMError, match=r"rsa-2048, rsa-3072.*ed25519"):
        key_spec("rsa-1024")
