"""JWS parsing and verification, JWK thumbprints (RFC 7638), CertIDs (RFC 9773)."""

from __future__ import annotations

import base64
import json

import josepy
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from acme_server import ari, ratelimits
from acme_server.jws import check_algorithm, load_jwk, parse_jws, verify_signature
from acme_server.problems import ACMEProblem


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_thumbprint_matches_josepy_for_ec_and_rsa_keys():
    key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    public = key.public_key()
    loaded = load_jwk(public.to_json())
    assert loaded.thumbprint == b64(public.thumbprint())


def test_rfc7638_example_thumbprint():
    # RFC 7638 §3.1.
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQ"
        "R0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTW"
        "hAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }
    assert load_jwk(jwk).thumbprint == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_eddsa_signature_verifies_and_a_changed_payload_does_not():
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes_raw()
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    protected = b64(json.dumps({"alg": "EdDSA", "jwk": jwk}).encode())
    payload = b64(b"{}")
    signature = private.sign(f"{protected}.{payload}".encode())
    document = {"protected": protected, "payload": payload, "signature": b64(signature)}
    verify_signature(parse_jws(json.dumps(document).encode()), load_jwk(jwk))
    document["payload"] = b64(b'{"a":1}')
    with pytest.raises(ACMEProblem) as caught:
        verify_signature(parse_jws(json.dumps(document).encode()), load_jwk(jwk))
    assert caught.value.type == "malformed"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", None])
def test_algorithms_outside_the_allowlist_are_refused(alg):
    with pytest.raises(ACMEProblem) as caught:
        check_algorithm({"alg": alg})
    assert caught.value.type == "badSignatureAlgorithm"
    assert caught.value.document()["algorithms"] == ["RS256", "ES256", "ES384", "EdDSA"]


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"not json",
        b'{"protected": "e30", "payload": "", "signature": "", "header": {}}',
        b'{"protected": "e30=", "payload": "", "signature": ""}',
        b'{"signatures": []}',
    ],
)
def test_malformed_jws_is_refused(body):
    with pytest.raises(ACMEProblem) as caught:
        parse_jws(body)
    assert caught.value.type == "malformed"


def test_private_and_weak_keys_are_refused():
    with pytest.raises(ACMEProblem, match="private"):
        load_jwk({"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c"})
    with pytest.raises(ACMEProblem) as caught:
        load_jwk({"kty": "oct", "k": "abc"})
    assert caught.value.type == "badPublicKey"


def test_cert_id_encodes_the_serial_as_der_integer_content():
    assert ari.cert_id(b"\x01\x02", 0x7F).endswith(".fw")
    assert ari.cert_id(b"\x01\x02", 0x80).endswith(".AIA")  # leading zero keeps it positive


def test_registered_name_counts_against_the_last_labels():
    assert ratelimits.registered_name("*.a.b.example.com", 2) == "example.com"
    assert ratelimits.registered_name("host.corp.example.co.uk", 3) == "example.co.uk"
