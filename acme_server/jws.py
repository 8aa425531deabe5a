"""JWS in ACME (RFC 8555 §6.2, RFC 7515 flattened JSON): parse, check headers, verify.

Only the protected header counts; an unprotected `header` is refused. Algorithms are an
allowlist (RS256, ES256, ES384, EdDSA): `none` and MACs are never accepted for a request
signature (MACs appear only inside External Account Binding, checked in acme_server.eab).
josepy parses RSA and EC keys; Ed25519 (RFC 8037 OKP) is handled here because josepy has no OKP.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import josepy
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from acme_server.problems import ACMEProblem

ALGORITHMS = ("RS256", "ES256", "ES384", "EdDSA")
_EC_ALGORITHMS = {"ES256": ("P-256", josepy.ES256), "ES384": ("P-384", josepy.ES384)}
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192


def b64decode(value: Any, what: str) -> bytes:
    """base64url without padding (RFC 7515 §2); raises malformed."""
    if not isinstance(value, str) or "=" in value:
        raise ACMEProblem("malformed", f"{what} must be base64url without padding")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ACMEProblem("malformed", f"{what} is not valid base64url") from None


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class JWSObject:
    """A parsed flattened JWS (not yet verified)."""

    protected: dict[str, Any]
    protected_b64: str
    payload_b64: str
    signature: bytes

    @property
    def signing_input(self) -> bytes:
        return f"{self.protected_b64}.{self.payload_b64}".encode()

    def payload(self) -> bytes:
        return b64decode(self.payload_b64, "payload") if self.payload_b64 else b""

    def payload_json(self) -> dict[str, Any]:
        """The payload as a JSON object; POST-as-GET (empty payload) is not allowed here."""
        raw = self.payload()
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ACMEProblem("malformed", "the payload is not JSON") from None
        if not isinstance(value, dict):
            raise ACMEProblem("malformed", "the payload must be a JSON object")
        return value


def parse_jws(body: bytes | dict[str, Any]) -> JWSObject:
    """Flattened JSON serialization only; raises malformed / badSignatureAlgorithm."""
    if isinstance(body, dict):
        document = body
    else:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ACMEProblem("malformed", "the body is not a JSON object") from None
    if not isinstance(document, dict):
        raise ACMEProblem("malformed", "the body must be a flattened JWS JSON object")
    if "header" in document:
        raise ACMEProblem("malformed", "unprotected JWS headers are not allowed")
    if "signatures" in document:
        raise ACMEProblem("malformed", "use the flattened JWS serialization (one signature)")
    if set(document) != {"protected", "payload", "signature"}:
        raise ACMEProblem("malformed", "the JWS must have exactly protected, payload and signature")
    protected_b64 = document["protected"]
    payload_b64 = document["payload"]
    if not isinstance(payload_b64, str):
        raise ACMEProblem("malformed", "payload must be a string")
    raw = b64decode(protected_b64, "protected header")
    try:
        protected = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ACMEProblem("malformed", "the protected header is not JSON") from None
    if not isinstance(protected, dict):
        raise ACMEProblem("malformed", "the protected header must be a JSON object")
    signature = b64decode(document["signature"], "signature")
    return JWSObject(protected, protected_b64, payload_b64, signature)


@dataclass(frozen=True)
class AccountKey:
    """A client's public key from a JWK: the key, its canonical JWK and RFC 7638 thumbprint."""

    key: Any
    jwk: dict[str, str]
    thumbprint: str

    def canonical_json(self) -> str:
        return json.dumps(self.jwk, sort_keys=True, separators=(",", ":"))

    def verify(self, alg: str, message: bytes, signature: bytes) -> bool:
        if alg == "EdDSA":
            if not isinstance(self.key, ed25519.Ed25519PublicKey):
                return False
            try:
                self.key.verify(signature, message)
            except InvalidSignature:
                return False
            return True
        if alg == "RS256":
            if not isinstance(self.key, rsa.RSAPublicKey):
                return False
            return bool(josepy.RS256.verify(self.key, message, signature))
        curve, algorithm = _EC_ALGORITHMS[alg]
        if not isinstance(self.key, ec.EllipticCurvePublicKey) or self.jwk.get("crv") != curve:
            return False
        return bool(algorithm.verify(self.key, message, signature))


def load_jwk(value: Any) -> AccountKey:
    """A public JWK (RSA, EC P-256/P-384, OKP Ed25519); raises badPublicKey / malformed."""
    if not isinstance(value, dict) or not isinstance(value.get("kty"), str):
        raise ACMEProblem("malformed", "jwk must be a JSON Web Key object")
    if "d" in value:
        raise ACMEProblem("badPublicKey", "jwk must be a public key (it has a private part)")
    kty = value["kty"]
    if kty == "OKP":
        if value.get("crv") != "Ed25519":
            raise ACMEProblem("badPublicKey", "only Ed25519 is accepted for OKP keys")
        raw = b64decode(value.get("x"), "jwk.x")
        try:
            key: Any = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ACMEProblem("badPublicKey", "jwk is not a valid Ed25519 public key") from None
        members = {"crv": "Ed25519", "kty": "OKP", "x": value["x"]}
    elif kty in ("RSA", "EC"):
        try:
            parsed = josepy.JWK.from_json(value)
        except (josepy.errors.DeserializationError, ValueError, TypeError, KeyError):
            raise ACMEProblem("badPublicKey", f"jwk is not a valid {kty} public key") from None
        # josepy wraps keys for comparison; verification wants cryptography's own object.
        key = getattr(parsed.key, "_wrapped", parsed.key)
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ACMEProblem("badPublicKey", "jwk must be a public key")
        if kty == "RSA":
            if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
                raise ACMEProblem(
                    "badPublicKey",
                    f"RSA account keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits",
                )
            if key.public_numbers().e < 65537:
                raise ACMEProblem("badPublicKey", "RSA public exponent is too small")
            members = {"e": value["e"], "kty": "RSA", "n": value["n"]}
        else:
            if value.get("crv") not in ("P-256", "P-384"):
                raise ACMEProblem("badPublicKey", "EC account keys must use P-256 or P-384")
            members = {"crv": value["crv"], "kty": "EC", "x": value["x"], "y": value["y"]}
    else:
        raise ACMEProblem("badPublicKey", f'key type "{kty}" is not accepted')
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    thumbprint = b64encode(hashlib.sha256(canonical.encode()).digest())
    return AccountKey(key, members, thumbprint)


@functools.lru_cache(maxsize=4096)
def load_jwk_json(text: str) -> AccountKey:
    """`load_jwk` of a stored account key (canonical JSON), parsed once per process.

    Parsing a JWK into a key object costs more than verifying a signature with it, and an
    account signs every request with the same key. The result is immutable: do not change it.
    """
    return load_jwk(json.loads(text))


def check_algorithm(protected: dict[str, Any]) -> str:
    alg = protected.get("alg")
    if alg not in ALGORITHMS:
        raise ACMEProblem(
            "badSignatureAlgorithm",
            f"JWS algorithm {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}",
            extra={"algorithms": list(ALGORITHMS)},
        )
    return str(alg)


def verify_signature(jws: JWSObject, key: AccountKey) -> None:
    alg = check_algorithm(jws.protected)
    if not key.verify(alg, jws.signing_input, jws.signature):
        raise ACMEProblem("malformed", "JWS signature does not verify")


def key_authorization(token: str, thumbprint: str) -> str:
    """RFC 8555 §8.1: token || "." || base64url(JWK thumbprint)."""
    return f"{token}.{thumbprint}"
