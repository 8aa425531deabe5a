"""The key that signs an issuer's OCSP responses: the issuer's own, or a delegated responder.

A delegated responder (RFC 6960 §4.2.2.2) has a key generated in the token (one label per
issuer, kept across renewals: the token has no key deletion to offer) and a short-lived
certificate from the issuer with id-kp-OCSPSigning and id-pkix-ocsp-nocheck. The certificate goes
through the same record-before-sign steps as every other certificate: pending row with the TBS
hash, token signature, issued row and audit entry in one transaction. A response is never given
a nextUpdate past its responder certificate's notAfter, and the certificate is renewed while it
still has `min(ocsp.validity, responder_validity / 2)` to run.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from ca.errors import CoreError
from ca.issuers import CLOCK_SKEW, new_serial, public_key_sha256
from ca.signing import assemble_certificate, prepare_certificate
from ca.storage import certificates as certificate_store
from ocsp.settings import OCSPSettings
from ocsp.storage import OCSPResponderRow

if TYPE_CHECKING:
    from ca.core import CACore
    from ca.issuers import Issuer

log = logging.getLogger("privca.ocsp")

RESPONDER_PROFILE = "ocsp-responder"
ACTOR = "privca-ocsp"


@dataclass(frozen=True)
class SigningKey:
    """What signs responses for one issuer."""

    signer: Any  # hsm.signer.Signer
    key_hash: bytes  # SHA-1 of the public key bits: the ResponderID byKey
    certificates: tuple[bytes, ...]  # the delegated responder certificate; () for the issuer
    not_after: datetime  # responses must not be valid past this
    label: str  # for metrics and logs

    @property
    def algorithm_name(self) -> str:
        return str(self.signer.algorithm)


def key_hash(public_key: Any) -> bytes:
    """SHA-1 of the subjectPublicKey BIT STRING contents (RFC 6960 §4.1.1, ResponderID byKey)."""
    info = asn1_keys.PublicKeyInfo.load(
        public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return hashlib.sha1(bytes(info["public_key"])).digest()  # noqa: S324 - RFC 6960 KeyHash


def responder_label(issuer_name: str) -> str:
    return f"privca-ocsp-{issuer_name}"


def issuer_key(issuer: Issuer) -> SigningKey:
    return SigningKey(
        issuer.signer,
        key_hash(issuer.certificate.public_key()),
        (),
        issuer.certificate.not_valid_after_utc,
        issuer.name,
    )


def _responder_signer(core: CACore, issuer: Issuer, settings: OCSPSettings) -> Any:
    label = responder_label(issuer.name)
    keystore = core.keystore
    if keystore.has_key(label):
        return keystore.find_signer(label)
    try:
        signer = keystore.generate_key(settings.responder_key_type, label)
    except Exception:
        # Another process generated it between has_key and generate_key.
        if not keystore.has_key(label):
            raise
        return keystore.find_signer(label)
    with core.database.write() as session:
        core.audit(
            session,
            actor=ACTOR,
            channel="ocsp",
            action="key_generated",
            object=f"ocsp-responder:{issuer.name}",
            details={"key_uri": signer.key_uri, "key_type": settings.responder_key_type},
        )
    return signer


def current_key(
    core: CACore, issuer: Issuer, settings: OCSPSettings, *, margin: timedelta = timedelta(0)
) -> SigningKey:
    """The signing key for the issuer's responses; issues a responder certificate when the
    newest one has less than the renewal time (plus `margin`) left."""
    if settings.responder == "issuer":
        return issuer_key(issuer)
    signer = _responder_signer(core, issuer, settings)
    fingerprint = public_key_sha256(signer.public_key)
    now = core.now()
    renew_before = timedelta(seconds=settings.responder_renew_before) + margin
    with core.database.read() as session:
        row = session.scalars(
            select(OCSPResponderRow)
            .where(
                OCSPResponderRow.issuer_id == issuer.id,
                OCSPResponderRow.public_key_sha256 == fingerprint,
            )
            .order_by(OCSPResponderRow.not_after.desc())
            .limit(1)
        ).first()
    if row is not None and row.not_before <= now and row.not_after - now > renew_before:
        return SigningKey(
            signer,
            key_hash(signer.public_key),
            (row.certificate_der,),
            row.not_after,
            row.key_label,
        )
    return issue_responder_certificate(core, issuer, signer, settings)


def _subject(issuer: Issuer) -> x509.Name:
    attributes = issuer.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer_cn = str(attributes[0].value) if attributes else issuer.name
    organisation = issuer.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    names = [x509.NameAttribute(NameOID.COMMON_NAME, f"{issuer_cn} OCSP Responder"[:64])]
    if organisation:
        names.append(organisation[0])
    return x509.Name(names)


def issue_responder_certificate(
    core: CACore, issuer: Issuer, signer: Any, settings: OCSPSettings
) -> SigningKey:
    """Issue (record, sign, record) a delegated responder certificate for `signer`'s key."""
    now = core.now()
    serial = new_serial()
    not_before = now - CLOCK_SKEW
    not_after = min(
        now + timedelta(seconds=settings.responder_validity),
        issuer.certificate.not_valid_after_utc,
    )
    public_key = signer.public_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(issuer))
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(issuer.subject_key_id, None, None), critical=False
        )
    )
    prepared = prepare_certificate(builder, issuer.signer)
    placeholder = prepared.placeholder
    pending = certificate_store.PendingCertificate(
        issuer_id=issuer.id,
        serial=serial,
        tbs_sha256=hashlib.sha256(prepared.tbs).digest(),
        subject=placeholder.subject.rfc4514_string(),
        sans=[],
        profile=RESPONDER_PROFILE,
        channel="ocsp",
        requester=ACTOR,
        owner=ACTOR,
        public_key_sha256=public_key_sha256(public_key),
        not_before=placeholder.not_valid_before_utc,
        not_after=placeholder.not_valid_after_utc,
    )
    with core.database.write() as session:
        row_id = certificate_store.insert_pending(session, pending, now)
    der = assemble_certificate(prepared, core.sign(issuer, prepared.tbs))
    certificate = x509.load_der_x509_certificate(der)
    try:
        certificate.verify_directly_issued_by(issuer.certificate)
    except (InvalidSignature, ValueError, TypeError):
        with core.database.write() as session:
            certificate_store.mark_failed(session, row_id, core.now())
        raise CoreError("the token returned a signature that does not verify") from None
    serial_hex = certificate_store.serial_hex(serial)
    with core.database.write() as session:
        certificate_store.mark_issued(session, row_id, der, hashlib.sha256(der).hexdigest(), now)
        core.audit(
            session,
            actor=ACTOR,
            channel="ocsp",
            action="certificate_issued",
            object=f"certificate:{issuer.name}:{serial_hex}",
            details={
                "issuer": issuer.name,
                "serial": serial_hex,
                "profile": RESPONDER_PROFILE,
                "subject": certificate.subject.rfc4514_string(),
                "not_after": certificate.not_valid_after_utc.isoformat(),
                "sha256": hashlib.sha256(der).hexdigest(),
            },
        )
        session.add(
            OCSPResponderRow(
                issuer_id=issuer.id,
                key_label=responder_label(issuer.name),
                public_key_sha256=public_key_sha256(public_key),
                serial=serial_hex,
                certificate_der=der,
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
                created_at=now,
            )
        )
    log.info("issued OCSP responder certificate %s for %s", serial_hex, issuer.name)
    return SigningKey(
        signer,
        key_hash(public_key),
        (der,),
        certificate.not_valid_after_utc,
        responder_label(issuer.name),
    )
