"""PKCS#10 (RFC 2986) requests: parse, check the self-signature, and read out key and names."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from ca.errors import BadCSR, BadPublicKey
from ca.issuance_request import Identifier

MAX_CSR_BYTES = 64 * 1024
_PEM = re.compile(rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----")


@dataclass(frozen=True)
class ParsedCSR:
    der: bytes
    subject: x509.Name
    public_key: CertificateIssuerPublicKeyTypes
    identifiers: tuple[Identifier, ...]
    requested_ekus: tuple[str, ...]
    challenge_password: str | None


def parse_csr(data: bytes) -> ParsedCSR:
    """Parse a PEM or DER CSR; raises BadCSR (malformed, bad signature) or BadPublicKey."""
    if len(data) > MAX_CSR_BYTES:
        raise BadCSR(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = (
            x509.load_pem_x509_csr(data)
            if _PEM.search(data[:200])
            else x509.load_der_x509_csr(data)
        )
    except (ValueError, TypeError):
        raise BadCSR("CSR is not a valid PKCS#10 request in PEM or DER") from None
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise BadPublicKey("CSR public key is malformed or of an unsupported type") from None
    if isinstance(public_key, dsa.DSAPublicKey | ed448.Ed448PublicKey):
        raise BadPublicKey("DSA and Ed448 keys are not accepted; use RSA, ECDSA or Ed25519")
    if not isinstance(
        public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    ):
        raise BadPublicKey("CSR public key type is not supported")
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signature_ok = False
    if not signature_ok:
        raise BadCSR("CSR signature does not verify with its own public key")
    try:
        extensions = csr.extensions
        subject = csr.subject
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise BadCSR("CSR carries malformed or duplicate extensions") from None
    identifiers = identifiers_from_extensions(extensions)
    ekus: tuple[str, ...] = ()
    try:
        eku = extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
        ekus = tuple(oid.dotted_string for oid in eku)
    except x509.ExtensionNotFound:
        pass
    challenge = None
    try:
        raw = csr.attributes.get_attribute_for_oid(x509.oid.AttributeOID.CHALLENGE_PASSWORD).value
        challenge = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    except (x509.AttributeNotFound, ValueError):
        pass
    return ParsedCSR(
        der=csr.public_bytes(Encoding.DER),
        subject=subject,
        public_key=public_key,
        identifiers=identifiers,
        requested_ekus=ekus,
        challenge_password=challenge,
    )


def identifiers_from_extensions(extensions: x509.Extensions) -> tuple[Identifier, ...]:
    """The SANs of a CSR or certificate as normalised identifiers (order kept)."""
    try:
        san = extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return ()
    found: list[Identifier] = []
    for name in san:
        if isinstance(name, x509.DNSName):
            found.append(Identifier("dns", name.value.lower()))
        elif isinstance(name, x509.IPAddress):
            address = name.value
            if isinstance(address, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise BadCSR("IP address SANs must be addresses, not networks")
            found.append(Identifier("ip", str(address)))
        elif isinstance(name, x509.RFC822Name):
            found.append(Identifier("email", name.value))
        elif isinstance(name, x509.UniformResourceIdentifier):
            found.append(Identifier("uri", name.value))
        else:
            raise BadCSR(f"subjectAltName type {type(name).__name__} is not supported")
    return tuple(found)


def common_name(name: x509.Name) -> str | None:
    attributes = name.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
