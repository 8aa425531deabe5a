"""The issuance pipeline: one path for every channel (ARCHITECTURE.md, "The issuance pipeline").

request -> policy -> reserve serial (pending row + TBS hash, committed) -> lint -> token signs
-> certificate row "issued" + audit entry in one transaction -> certificate and chain returned.
A crash after signing and before the final commit leaves a pending row and no certificate: the
signed bytes never leave this process before that commit.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca import audit as audit_log
from ca import crl, policy
from ca.csr import common_name
from ca.errors import (
    BadRequest,
    CoreError,
    LintFailed,
    PolicyDenied,
    SignatureInvalid,
    Unavailable,
    UnknownIssuer,
    UnknownProfile,
)
from ca.issuance_request import IssuanceRequest
from ca.issuers import CLOCK_SKEW, Issuer, new_serial, public_key_sha256
from ca.profiles import EKU_OIDS, Profile
from ca.signing import PreparedCertificate, assemble_certificate, prepare_certificate
from ca.storage import certificates as certificate_store
from ca.storage.group_commit import BatchOperation
from hsm.public_key import signature_valid

if TYPE_CHECKING:
    from ca.core import CACore

log = logging.getLogger("privca.issuance")

_SERIAL_ATTEMPTS = 3
# Bounds on a requested notBefore: backdating hides when a certificate was really made.
MAX_BACKDATE = timedelta(hours=1)
MAX_POSTDATE = timedelta(days=90)


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    der: bytes
    issuer: Issuer
    serial: int
    row_id: int

    @property
    def serial_hex(self) -> str:
        return certificate_store.serial_hex(self.serial)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)

    @property
    def chain_pem(self) -> bytes:
        """End-entity certificate first, then the issuer chain up to (and including) the root."""
        return self.pem + self.issuer.chain_pem


def _subject(profile: Profile, request: IssuanceRequest) -> x509.Name:
    if profile.subject_from_csr and request.subject is not None and len(request.subject) > 0:
        return request.subject
    for identifier in request.identifiers:
        # RFC 5280 upper bound for CN is 64 characters; longer names stay in the SAN only.
        if identifier.type in ("dns", "ip") and len(identifier.value) <= 64:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identifier.value)])
    if request.subject is not None:
        cn = common_name(request.subject)
        if cn:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])])
    return x509.Name([])


def _key_usage(profile: Profile, request: IssuanceRequest) -> x509.KeyUsage:
    usages = set(profile.key_usage)
    if isinstance(request.public_key, rsa.RSAPublicKey) and profile.key_encipherment_for_rsa:
        usages.add("key_encipherment")
    if not isinstance(request.public_key, rsa.RSAPublicKey):
        usages.discard("key_encipherment")  # only RSA keys can encipher keys
    if not isinstance(request.public_key, ec.EllipticCurvePublicKey):
        usages.discard("key_agreement")
    return x509.KeyUsage(
        digital_signature="digital_signature" in usages,
        content_commitment="content_commitment" in usages,
        key_encipherment="key_encipherment" in usages,
        data_encipherment="data_encipherment" in usages,
        key_agreement="key_agreement" in usages,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def build_certificate(
    core: CACore,
    issuer: Issuer,
    profile: Profile,
    request: IssuanceRequest,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """The end-entity certificate the profile describes for this request."""
    subject = _subject(profile, request)
    urls = core.urls
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(request.public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(profile, request), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([EKU_OIDS[name] for name in profile.extended_key_usage]),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(request.public_key), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier(issuer.subject_key_id, None, None), critical=False
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
                        x509.UniformResourceIdentifier(urls.ca_certificate(issuer.name)),
                    ),
                ]
            ),
            critical=False,
        )
    )
    # CRL Distribution Points (the issuer's CRL, or its shard) and, with deltas, Freshest CRL.
    for extension, critical in crl.certificate_extensions(core, issuer.name, serial):
        builder = builder.add_extension(extension, critical=critical)
    if request.identifiers:
        # RFC 5280 §4.2.1.6: with an empty subject the SAN extension must be critical.
        builder = builder.add_extension(
            x509.SubjectAlternativeName([i.to_general_name() for i in request.identifiers]),
            critical=len(subject) == 0,
        )
    return builder


def _validity(
    profile: Profile, request: IssuanceRequest, issuer: Issuer, now: datetime
) -> tuple[datetime, datetime, int]:
    seconds = request.validity_seconds or profile.validity_days * 86400
    if request.not_before is not None and not (
        now - MAX_BACKDATE <= request.not_before <= now + MAX_POSTDATE
    ):
        raise BadRequest("notBefore must be within one hour before and 90 days after now")
    not_before = request.not_before or (now - CLOCK_SKEW)
    not_after = not_before + timedelta(seconds=seconds)
    # A certificate must not outlive its issuer (relying parties would reject the chain).
    not_after = min(not_after, issuer.certificate.not_valid_after_utc)
    return not_before, not_after, seconds


def issue(core: CACore, request: IssuanceRequest) -> IssuedCertificate:
    """Run the whole pipeline; raises a CoreError subclass for anything the client got wrong."""
    started = time.perf_counter()
    result = "error"
    try:
        issued = _issue(core, request)
        result = "issued"
        return issued
    except PolicyDenied:
        result = "denied"
        raise
    except (Unavailable, SignatureInvalid):
        result = "error"  # our side failed (token, signature): what an SLI must count
        raise
    except CoreError:
        result = "rejected"
        raise
    finally:
        core.metrics.observe_issuance(request.channel, result, time.perf_counter() - started)


def issue_with_profile(
    core: CACore, request: IssuanceRequest, profile: Profile
) -> IssuedCertificate:
    """The pipeline with a profile the core defines itself (e.g. the HTTPS server certificate)."""
    return _issue(core, request, profile)


def _issue(
    core: CACore, request: IssuanceRequest, profile: Profile | None = None
) -> IssuedCertificate:
    profile = profile or core.profiles.get(request.profile)
    if profile is None:
        raise UnknownProfile(
            f'unknown profile "{request.profile}"; known: {", ".join(sorted(core.profiles))}'
        )
    issuer = core.issuers.get(profile.issuer)
    if issuer is None:
        raise UnknownIssuer(f'issuer "{profile.issuer}" has no certificate yet')
    now = core.now()
    not_before, not_after, seconds = _validity(profile, request, issuer, now)
    violations = policy.evaluate(profile.policy, profile, request, validity_seconds=seconds)
    if violations:
        _record_denial(core, request, violations)
        summary = "; ".join(v.detail for v in violations)
        raise PolicyDenied(f"policy denied the request: {summary}", per_identifier=violations)

    for attempt in range(_SERIAL_ATTEMPTS):
        serial = new_serial()
        builder = build_certificate(core, issuer, profile, request, serial, not_before, not_after)
        prepared = prepare_certificate(builder, issuer.signer)
        _lint(core, profile, prepared)
        try:
            row_id, pending = _reserve(core, issuer, profile, request, serial, prepared, now)
            break
        except IntegrityError:
            # A serial collision at 127 random bits means a broken RNG more than bad luck.
            log.warning("serial collision on issuer %s (attempt %d)", issuer.name, attempt + 1)
    else:
        raise CoreError("could not reserve a unique serial number")

    signature = core.sign(issuer, prepared.tbs)
    # The token's signature is checked with the issuer certificate's key over the very TBS the
    # certificate carries (assemble_certificate copies it verbatim), as a relying party would;
    # checked on the TBS rather than the parsed certificate, which costs a parse and a key load.
    if not signature_valid(
        issuer.certificate.public_key(), issuer.signer.algorithm, signature, prepared.tbs
    ):
        _mark_failed(core, row_id, issuer, request)
        raise SignatureInvalid("the signing token returned an invalid signature")
    der = assemble_certificate(prepared, signature)
    certificate = x509.load_der_x509_certificate(der)
    record_issuance(core, issuer, profile, request, row_id, der, pending)
    return IssuedCertificate(certificate, der, issuer, serial, row_id)


def _reserve(
    core: CACore,
    issuer: Issuer,
    profile: Profile,
    request: IssuanceRequest,
    serial: int,
    prepared: PreparedCertificate,
    now: datetime,
) -> tuple[int, certificate_store.PendingCertificate]:
    """The pending row (committed), and what it recorded: the subject and dates as the TBS
    has them, which the issued row's audit entry repeats."""
    placeholder = prepared.placeholder
    pending = certificate_store.PendingCertificate(
        issuer_id=issuer.id,
        serial=serial,
        tbs_sha256=hashlib.sha256(prepared.tbs).digest(),
        subject=placeholder.subject.rfc4514_string(),
        sans=[str(i) for i in request.identifiers],
        profile=profile.name,
        channel=request.channel,
        requester=request.requester,
        owner=request.owner,
        public_key_sha256=public_key_sha256(request.public_key),
        not_before=placeholder.not_valid_before_utc,
        not_after=placeholder.not_valid_after_utc,
    )
    return core.group_commit.run_batched(_RESERVE, (pending, now)), pending


# Reservations of one group-commit batch go in as one multi-row INSERT; a serial collision
# fails it, and the batch is retried row by row so that only the colliding request retries.
_RESERVE: BatchOperation[tuple[certificate_store.PendingCertificate, datetime], int] = (
    BatchOperation(
        "reserve_serial",
        run_one=lambda session, item: certificate_store.insert_pending(session, *item),
        run_many=certificate_store.insert_pending_many,
    )
)


@dataclass(frozen=True)
class _Recording:
    """What the issuing transaction writes for one certificate, and who to tell."""

    core: CACore
    issuer: Issuer
    row_id: int
    der: bytes
    fingerprint: str
    now: datetime
    audit_entry: audit_log.NewEntry
    on_recorded: Callable[[Session, int], None] | None


def record_issuance(
    core: CACore,
    issuer: Issuer,
    profile: Profile,
    request: IssuanceRequest,
    row_id: int,
    der: bytes,
    pending: certificate_store.PendingCertificate,
) -> None:
    """Pending -> issued plus its audit entry in one transaction: then the certificate exists.

    `pending` is what the reservation recorded from this certificate's TBS (subject, dates).
    """
    fingerprint = hashlib.sha256(der).hexdigest()
    serial = certificate_store.serial_hex(pending.serial)
    entry = audit_log.NewEntry(
        actor=request.requester,
        channel=request.channel,
        action="certificate_issued",
        object=f"certificate:{issuer.name}:{serial}",
        details={
            "issuer": issuer.name,
            "serial": serial,
            "profile": profile.name,
            "subject": pending.subject,
            "sans": list(pending.sans),
            "owner": request.owner,
            "not_after": pending.not_after.isoformat(),
            "sha256": fingerprint,
        },
    )
    recording = _Recording(
        core, issuer, row_id, der, fingerprint, core.now(), entry, request.on_recorded
    )
    core.group_commit.run_batched(_RECORD, recording)


def _record_one(session: Session, recording: _Recording) -> None:
    core = recording.core
    certificate_store.mark_issued(
        session, recording.row_id, recording.der, recording.fingerprint, recording.now
    )
    entry = recording.audit_entry
    core.audit(
        session,
        actor=entry.actor,
        channel=entry.channel,
        action=entry.action,
        object=entry.object,
        details=entry.details,
    )
    _tell_listeners(session, recording)


def _record_many(session: Session, recordings: Sequence[_Recording]) -> list[None]:
    """A batch's rows in one UPDATE, its audit entries chained in one INSERT, then each
    certificate's listeners, all in the shared transaction: the same writes as `_record_one`."""
    certificate_store.mark_issued_many(
        session, [(r.row_id, r.der, r.fingerprint, r.now) for r in recordings]
    )
    recordings[0].core.audit_many(session, [r.audit_entry for r in recordings])
    for recording in recordings:
        _tell_listeners(session, recording)
    return [None] * len(recordings)


def _tell_listeners(session: Session, recording: _Recording) -> None:
    recording.core.after_issuance(session, recording.issuer, recording.row_id)
    if recording.on_recorded is not None:
        recording.on_recorded(session, recording.row_id)


_RECORD: BatchOperation[_Recording, None] = BatchOperation(
    "record_issuance", run_one=_record_one, run_many=_record_many
)


def _mark_failed(core: CACore, row_id: int, issuer: Issuer, request: IssuanceRequest) -> None:
    """The token produced a signature that does not verify: nothing leaves, and it is audited
    (a key operation that went wrong is exactly what an auditor must see)."""
    with core.database.write() as session:
        certificate_store.mark_failed(session, row_id, core.now())
        core.audit(
            session,
            actor=request.requester,
            channel=request.channel,
            action="signature_invalid",
            object=f"issuer:{issuer.name}",
            details={"key_uri": issuer.signer.key_uri, "certificate_row": row_id},
        )
    core.metrics.hsm_errors.labels(key=issuer.name).inc()


def _record_denial(core: CACore, request: IssuanceRequest, violations: list) -> None:
    with core.database.write() as session:
        core.audit(
            session,
            actor=request.requester,
            channel=request.channel,
            action="issuance_denied",
            object=f"profile:{request.profile}",
            details={
                "sans": [str(i) for i in request.identifiers],
                "owner": request.owner,
                "violations": [
                    {"identifier": v.identifier, "detail": v.detail} for v in violations
                ],
            },
        )


def _lint(core: CACore, profile: Profile, prepared: PreparedCertificate) -> None:
    if profile.lint == "off":
        return
    from ca.lint import lint_certificate

    # The placeholder carries the final TBS; only its signature value is fake, which the
    # certificate lints do not judge.
    findings = lint_certificate(prepared.placeholder.public_bytes(Encoding.DER))
    if not findings:
        return
    if profile.lint == "warn":
        log.warning("pre-issuance lint findings for profile %s: %s", profile.name, findings)
        return
    raise LintFailed("pre-issuance lint refused the certificate: " + "; ".join(findings[:5]))
