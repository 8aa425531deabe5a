"""Split certificate signing so the TBS can be recorded before the CA key is used.

cryptography's builders want a private key object and sign in one step. To record the serial and
the TBS hash before the token signs (ARCHITECTURE.md, record-before-sign), the builder first runs
with a *capture key*: an object of the right key class whose `sign()` only keeps the TBS bytes and
returns a placeholder. The placeholder certificate is what pre-issuance lint sees; the token then
signs the captured TBS once and the real signature is spliced in (the TBS bytes are kept
verbatim, so what was recorded is exactly what is signed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from hsm.public_key import signature_valid
from hsm.signer import Signer

# A syntactically valid ECDSA-Sig-Value (r = s = 1): parsers that peek at it must not choke.
_PLACEHOLDER_SIGNATURE = bytes.fromhex("3006020101020101")


def _no_key_material(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise TypeError("a capture key holds no private key material")


class _Capture:
    captured: bytes | None = None

    def __init__(self, public_key: CertificateIssuerPublicKeyTypes) -> None:
        self._public_key = public_key

    def public_key(self) -> Any:
        return self._public_key

    def _capture(self, data: bytes) -> bytes:
        self.captured = bytes(data)
        return _PLACEHOLDER_SIGNATURE

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self

    private_bytes = private_numbers = exchange = decrypt = private_bytes_raw = _no_key_material


class _CaptureEC(_Capture, ec.EllipticCurvePrivateKey):
    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve  # type: ignore[union-attr]

    @property
    def key_size(self) -> int:
        return self._public_key.key_size  # type: ignore[union-attr]

    def sign(self, data: bytes, signature_algorithm: Any) -> bytes:
        return self._capture(data)


class _CaptureRSA(_Capture, rsa.RSAPrivateKey):
    @property
    def key_size(self) -> int:
        return self._public_key.key_size  # type: ignore[union-attr]

    def sign(self, data: bytes, padding: Any, algorithm: Any) -> bytes:
        return self._capture(data)


class _CaptureEd25519(_Capture, ed25519.Ed25519PrivateKey):
    def sign(self, data: bytes) -> bytes:
        return self._capture(data)


def capture_key(public_key: CertificateIssuerPublicKeyTypes) -> Any:
    """A stand-in private key for `public_key` that records what a builder asks it to sign."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _CaptureEC(public_key)
    if isinstance(public_key, rsa.RSAPublicKey):
        return _CaptureRSA(public_key)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return _CaptureEd25519(public_key)
    raise TypeError(f"no capture key for {type(public_key).__name__}")


@dataclass(frozen=True)
class PreparedCertificate:
    """A certificate whose TBS is final and whose signature is a placeholder."""

    tbs: bytes
    placeholder: x509.Certificate


def prepare_certificate(builder: x509.CertificateBuilder, signer: Signer) -> PreparedCertificate:
    """Run the builder without touching the CA key; the TBS is what the signer will sign."""
    key = capture_key(signer.public_key)
    algorithm: hashes.HashAlgorithm | None = signer.hash_algorithm
    placeholder = builder.sign(key, algorithm)
    assert key.captured is not None
    return PreparedCertificate(tbs=key.captured, placeholder=placeholder)


def assemble_certificate(prepared: PreparedCertificate, signature: bytes) -> bytes:
    """The DER certificate: the prepared TBS and algorithm with the real signature value.

    Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }
    (RFC 5280 §4.1): the TBS and the algorithm are copied verbatim from the placeholder, so
    what was recorded is exactly what is signed. Spliced by hand: parsing the whole placeholder
    with asn1crypto to swap one field cost more than the rest of the assembly together.
    """
    placeholder = prepared.placeholder.public_bytes(Encoding.DER)
    tbs = prepared.tbs
    start = _content_start(placeholder, 0)
    if placeholder[start : start + len(tbs)] != tbs:
        raise ValueError("the placeholder certificate does not carry the prepared TBS")
    algorithm_start = start + len(tbs)
    algorithm_end = _content_start(placeholder, algorithm_start) + _content_length(
        placeholder, algorithm_start
    )
    algorithm = placeholder[algorithm_start:algorithm_end]
    signature_value = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm + signature_value
    return b"\x30" + _der_length(len(body)) + body


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _content_start(der: bytes, offset: int) -> int:
    """Where the content of the (single-octet tag, definite length) element at offset starts."""
    first = der[offset + 1]
    return offset + 2 + (first & 0x7F if first & 0x80 else 0)


def _content_length(der: bytes, offset: int) -> int:
    first = der[offset + 1]
    if not first & 0x80:
        return first
    count = first & 0x7F
    return int.from_bytes(der[offset + 2 : offset + 2 + count], "big")


def sign_certificate(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    """Build and sign in one go (CA certificates at set-up); the token's signature is checked."""
    prepared = prepare_certificate(builder, signer)
    signature = signer.sign(prepared.tbs)
    if not signature_valid(signer.public_key, signer.algorithm, signature, prepared.tbs):
        raise ValueError(
            f"the token key {signer.key_uri} returned a signature that does not verify"
        )
    return x509.load_der_x509_certificate(assemble_certificate(prepared, signature))
