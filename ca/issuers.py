"""Issuers: the root and the issuing CAs: keys in the token, certificates, chains.

`initialise()` is idempotent: it creates what is missing (a key in the token, a certificate) and
never replaces a key or a certificate that exists. An issuing CA under an offline root
(`parent = "external"`) gets a key and a CSR; its certificate is imported later.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.config import CAKeyConfig, Config
from ca.errors import BadRequest, Conflict, UnknownIssuer
from ca.signing import capture_key, sign_certificate
from ca.storage import Database
from ca.storage.models import IssuerRow
from ca.urls import PublicURLs
from hsm.signer import Signer
from hsm.uri import key_label

# Backdate notBefore a little so relying parties with a slow clock accept a fresh certificate.
CLOCK_SKEW = timedelta(minutes=1)


class KeyStore(Protocol):
    """Where CA keys live: hsm.Token in production; tests may pass a software stand-in."""

    def has_key(self, label: str) -> bool: ...
    def generate_key(self, key_type: str, label: str) -> Signer: ...
    def find_signer(self, label: str) -> Signer: ...


@dataclass(frozen=True)
class Issuer:
    """A CA whose certificate we have; `chain` runs from this CA's certificate up to the root."""

    id: int
    name: str
    key_type: str
    certificate: x509.Certificate
    certificate_der: bytes
    signer: Signer
    chain: tuple[x509.Certificate, ...]
    parent_name: str | None
    subject_key_id: bytes

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.chain)


def new_serial() -> int:
    """A positive serial with 127 bits from the CSPRNG (RFC 5280 §4.1.2.2: at most 20 octets)."""
    while True:
        serial = int.from_bytes(os.urandom(16), "big") >> 1
        if serial:
            return serial


def public_key_sha256(public_key: object) -> str:
    der = public_key.public_bytes(  # type: ignore[attr-defined]
        Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _issuer_hashes(certificate_der: bytes) -> dict[str, bytes]:
    """SHA-1 and SHA-256 of the subject name and of the key bits, as OCSP CertIDs use them."""
    parsed = asn1_x509.Certificate.load(certificate_der)
    name = parsed.subject.dump()
    key_bits = bytes(parsed.public_key["public_key"])
    return {
        "name_hash_sha1": hashlib.sha1(name).digest(),  # noqa: S324 - RFC 6960 CertID
        "key_hash_sha1": hashlib.sha1(key_bits).digest(),  # noqa: S324 - RFC 6960 CertID
        "name_hash_sha256": hashlib.sha256(name).digest(),
        "key_hash_sha256": hashlib.sha256(key_bits).digest(),
    }


def _ca_builder(
    ca: CAKeyConfig,
    subject_key: Signer,
    issuer_name: x509.Name,
    issuer_ski: bytes | None,
    urls: PublicURLs,
    parent: str | None,
    now: datetime,
    not_after_cap: datetime | None,
) -> x509.CertificateBuilder:
    not_after = now + timedelta(days=ca.validity_days)
    if not_after_cap is not None:
        not_after = min(not_after, not_after_cap)
    ski = x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string(ca.subject))
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key)
        .serial_number(new_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=ca.path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    if parent is not None and issuer_ski is not None:
        builder = (
            builder.add_extension(
                x509.AuthorityKeyIdentifier(issuer_ski, None, None), critical=False
            )
            .add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(urls.crl(parent))], None, None, None
                        )
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(urls.ocsp()),
                        ),
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.CA_ISSUERS,
                            x509.UniformResourceIdentifier(urls.ca_certificate(parent)),
                        ),
                    ]
                ),
                critical=False,
            )
        )
    return builder


@dataclass(frozen=True)
class InitReport:
    created_keys: tuple[str, ...]
    created_certificates: tuple[str, ...]
    awaiting_certificate: tuple[str, ...]


AuditHook = Callable[[Session, str, str, dict[str, object]], None]
RecordCACertificate = Callable[[Session, "Issuer", x509.Certificate, str], None]


def initialise(
    config: Config,
    database: Database,
    keystore: KeyStore,
    *,
    audit: AuditHook,
    record_ca_certificate: RecordCACertificate,
    now: datetime | None = None,
) -> InitReport:
    """Create missing CA keys and certificates; never replaces one that exists."""
    now = now or datetime.now(UTC)
    urls = PublicURLs(config.server.public_base_url, config.server.revocation_base_url)
    created_keys: list[str] = []
    created_certs: list[str] = []
    awaiting: list[str] = []
    for ca in (config.root, *config.issuers):
        if keystore.has_key(ca.key_label):
            signer = keystore.find_signer(ca.key_label)
        else:
            signer = keystore.generate_key(ca.key_type, ca.key_label)
            created_keys.append(ca.name)
            with database.write() as session:
                audit(
                    session,
                    "key_generated",
                    f"issuer:{ca.name}",
                    {"key_uri": signer.key_uri, "key_type": ca.key_type},
                )
        with database.write() as session:
            row = session.scalars(select(IssuerRow).where(IssuerRow.name == ca.name)).first()
            if row is None:
                row = IssuerRow(
                    name=ca.name,
                    key_uri=signer.key_uri,
                    key_type=ca.key_type,
                    parent_name=ca.parent,
                    created_at=now,
                )
                session.add(row)
                session.flush()
            if row.certificate_der is not None:
                continue
            if ca.parent == "external":
                if row.csr_der is None:
                    row.csr_der = _ca_csr(ca, signer)
                    audit(session, "ca_csr_created", f"issuer:{ca.name}", {})
                awaiting.append(ca.name)
                continue
            if ca.parent is None:
                builder = _ca_builder(
                    ca,
                    signer,
                    x509.Name.from_rfc4514_string(ca.subject),
                    None,
                    urls,
                    None,
                    now,
                    None,
                )
                certificate = sign_certificate(builder, signer)
            else:
                parent = _load_issuer(session, ca.parent, keystore)
                if parent is None:
                    awaiting.append(ca.name)
                    continue
                builder = _ca_builder(
                    ca,
                    signer,
                    parent.certificate.subject,
                    parent.subject_key_id,
                    urls,
                    parent.name,
                    now,
                    parent.certificate.not_valid_after_utc,
                )
                certificate = sign_certificate(builder, parent.signer)
                record_ca_certificate(session, parent, certificate, ca.name)
            _store_certificate(row, certificate)
            created_certs.append(ca.name)
            audit(
                session,
                "ca_certificate_created",
                f"issuer:{ca.name}",
                {
                    "serial": format(certificate.serial_number, "x"),
                    "subject": certificate.subject.rfc4514_string(),
                },
            )
    return InitReport(tuple(created_keys), tuple(created_certs), tuple(awaiting))


def _ca_csr(ca: CAKeyConfig, signer: Signer) -> bytes:
    # A CSR is signed over its CertificationRequestInfo; reuse the capture trick, then assemble.
    key = capture_key(signer.public_key)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name.from_rfc4514_string(ca.subject))
        .add_extension(x509.BasicConstraints(ca=True, path_length=ca.path_length), critical=True)
    )
    placeholder = builder.sign(key, signer.hash_algorithm)
    request = asn1_csr.CertificationRequest.load(placeholder.public_bytes(Encoding.DER))
    request["signature"] = signer.sign(key.captured)
    return request.dump()


def _store_certificate(row: IssuerRow, certificate: x509.Certificate) -> None:
    der = certificate.public_bytes(Encoding.DER)
    row.certificate_der = der
    row.subject_key_id = x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    for column, value in _issuer_hashes(der).items():
        setattr(row, column, value)


def import_certificate(
    database: Database,
    keystore: KeyStore,
    name: str,
    certificate_pem: bytes,
    chain_pem: bytes,
    *,
    audit: AuditHook,
) -> None:
    """Import the certificate an offline root signed for issuer `name` (and the chain above it)."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        chain = x509.load_pem_x509_certificates(chain_pem) if chain_pem.strip() else []
    except ValueError:
        raise BadRequest("certificate or chain is not valid PEM") from None
    with database.write() as session:
        row = session.scalars(select(IssuerRow).where(IssuerRow.name == name)).first()
        if row is None:
            raise UnknownIssuer(f'no issuer named "{name}"')
        if row.certificate_der is not None:
            raise Conflict(f'issuer "{name}" already has a certificate; it is never replaced')
        signer = keystore.find_signer(_label_from_uri(row.key_uri))
        if public_key_sha256(certificate.public_key()) != public_key_sha256(signer.public_key):
            raise BadRequest("certificate public key does not match the issuer's key in the token")
        try:
            bc = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise BadRequest("certificate is not a CA certificate (basicConstraints cA missing)")
        issuer_cert = chain[0] if chain else None
        if issuer_cert is not None:
            try:
                certificate.verify_directly_issued_by(issuer_cert)
            except (InvalidSignature, ValueError, TypeError):
                raise BadRequest(
                    "certificate is not signed by the first certificate of the chain"
                ) from None
        _store_certificate(row, certificate)
        _store_external_chain(session, row, chain)
        audit(
            session,
            "ca_certificate_imported",
            f"issuer:{name}",
            {"serial": format(certificate.serial_number, "x")},
        )


def _store_external_chain(session: Session, row: IssuerRow, chain: list[x509.Certificate]) -> None:
    # The offline root and any intermediates above an imported CA are kept as pseudo-issuers
    # without keys, so chains can be served; they are keyed "external:<sha256>".
    parent_name = None
    for certificate in reversed(chain):
        der = certificate.public_bytes(Encoding.DER)
        name = "external-" + hashlib.sha256(der).hexdigest()[:16]
        existing = session.scalars(select(IssuerRow).where(IssuerRow.name == name)).first()
        if existing is None:
            existing = IssuerRow(
                name=name,
                key_uri="",
                key_type="external",
                parent_name=parent_name,
                created_at=datetime.now(UTC),
            )
            _store_certificate(existing, certificate)
            session.add(existing)
        parent_name = name
    row.parent_name = parent_name or "external"


def _label_from_uri(key_uri: str) -> str:
    # Test keystores name keys "software:<label>"; everything else is an RFC 7512 URI.
    if key_uri.startswith("software:"):
        return key_uri.removeprefix("software:")
    return key_label(key_uri)


def _load_issuer(session: Session, name: str, keystore: KeyStore) -> Issuer | None:
    rows = {row.name: row for row in session.scalars(select(IssuerRow))}
    return _build_issuer(rows, name, keystore)


def _build_issuer(
    rows: Mapping[str, IssuerRow], name: str, keystore: KeyStore | None
) -> Issuer | None:
    row = rows.get(name)
    if row is None or row.certificate_der is None:
        return None
    certificate = x509.load_der_x509_certificate(row.certificate_der)
    chain = [certificate]
    parent = row.parent_name
    seen = {name}
    while parent and parent != "external" and parent not in seen:
        seen.add(parent)
        parent_row = rows.get(parent)
        if parent_row is None or parent_row.certificate_der is None:
            break
        chain.append(x509.load_der_x509_certificate(parent_row.certificate_der))
        parent = parent_row.parent_name
    signer: Signer | None = None
    if keystore is not None and row.key_type != "external":
        signer = keystore.find_signer(_label_from_uri(row.key_uri))
        if public_key_sha256(signer.public_key) != public_key_sha256(certificate.public_key()):
            from hsm.errors import KeyMismatch

            raise KeyMismatch(
                f'issuer "{name}": the certificate does not match the token key {row.key_uri}'
            )
    return Issuer(
        id=row.id,
        name=row.name,
        key_type=row.key_type,
        certificate=certificate,
        certificate_der=row.certificate_der,
        signer=signer,  # type: ignore[arg-type]
        chain=tuple(chain),
        parent_name=row.parent_name,
        subject_key_id=row.subject_key_id or b"",
    )


def load_issuers(database: Database, keystore: KeyStore) -> dict[str, Issuer]:
    """Every CA with a certificate and a key, checked against the token (KeyMismatch if not)."""
    with database.read() as session:
        rows = {row.name: row for row in session.scalars(select(IssuerRow))}
    issuers = {}
    for name, row in rows.items():
        if row.key_type == "external":
            continue
        issuer = _build_issuer(rows, name, keystore)
        if issuer is not None:
            issuers[name] = issuer
    return issuers


def pending_csrs(database: Database) -> dict[str, bytes]:
    """Issuing CAs that wait for an offline root: name -> CSR (DER)."""
    with database.read() as session:
        return {
            row.name: row.csr_der
            for row in session.scalars(select(IssuerRow))
            if row.certificate_der is None and row.csr_der is not None
        }
