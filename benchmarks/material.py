"""Test material the benchmarks make before timing starts: P-256 CSRs. (The software CA some
of them need is tests.support.software_ca, shared with the tests.)"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID


def p256_csrs(count: int, name_format: str) -> list[bytes]:
    """`count` DER CSRs, each with a fresh P-256 key and `name_format.format(i)` as CN and SAN."""
    csrs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = name_format.format(i)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        csrs.append(csr.public_bytes(Encoding.DER))
    return csrs
