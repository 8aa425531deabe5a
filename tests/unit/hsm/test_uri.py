"""RFC 7512 key URIs."""

from __future__ import annotations

import pytest

from hsm.uri import key_label, private_key_uri


def test_plain_labels_stay_readable_and_id_is_percent_encoded() -> None:
    assert private_key_uri("privca", "root-2025", bytes.fromhex("00ff10")) == (
        "pkcs11:token=privca;object=root-2025;id=%00%ff%10;type=private"
    )


def test_separators_spaces_and_non_ascii_are_percent_encoded() -> None:
    uri = private_key_uri("my token", "a;b/c?d%é", b"\x01")

    assert uri == "pkcs11:token=my%20token;object=a%3Bb%2Fc%3Fd%25%C3%A9;id=%01;type=private"


def test_rfc7512_reserved_but_allowed_characters_stay() -> None:
    uri = private_key_uri("t", "ca:[1]@x=y,z", b"")

    assert uri.startswith("pkcs11:token=t;object=ca:[1]@x=y,z;")


def test_key_label_reads_back_the_object_attribute():
    uri = private_key_uri("privca", "privca-ca;issuing ec", b"\x01\xff")
    assert key_label(uri) == "privca-ca;issuing ec"
    with pytest.raises(ValueError):
        key_label("pkcs11:token=x;id=%01")
    with pytest.raises(ValueError):
        key_label("file:/etc/passwd")
