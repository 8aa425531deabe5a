"""simpleenroll, simplereenroll and serverkeygen: authenticate, build one IssuanceRequest, issue.

The certificate itself is made only by the core (`core.issue`). This module decides who the
device is (its owner in the inventory), whether the request may go ahead (re-enrollment keeps
its names, channel binding, manual approval) and, for serverkeygen, makes the device's key in
software: never in the token, never written anywhere, only returned to the device.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca.csr import ParsedCSR, identifiers_from_extensions
from ca.errors import CoreError, Forbidden, Unauthorized
from ca.issuance_request import IssuanceRequest
from ca.storage import certificates as certificate_store
from ca.storage.models import CertificateRow
from est_server import storage
from est_server.auth import (
    BasicVerifier,
    IssuedByUs,
    PeerCertificate,
    issued_by_us,
    parse_basic,
    under_trust_anchor,
)
from est_server.config import Label

if TYPE_CHECKING:
    from ca.core import CACore

log = logging.getLogger("privca.est")

OWNER_MAX = 256
# RFC 7030 §4.4.1.1/§4.4.1.2: the client asks for an encrypted key; we only return keys over TLS.
_KEY_ENCRYPTION_ATTRIBUTES = {"1.2.840.113549.1.9.16.2.54", "1.2.840.113549.1.9.16.2.55"}


class NotSupported(CoreError):
    """A request EST defines that this server does not implement (rendered as 501)."""

    kind = "est_not_supported"


@dataclass(frozen=True)
class Identity:
    """The device behind a request: its Basic user, its client certificate, or both."""

    user: str | None
    peer: PeerCertificate | None
    ours: IssuedByUs | None

    @property
    def owner(self) -> str:
        """Recorded on the certificate; a renewal keeps the owner of the certificate renewed."""
        if self.ours is not None and self.ours.owner:
            return self.ours.owner
        if self.peer is not None:
            return ("est-cert:" + self.peer.certificate.subject.rfc4514_string())[:OWNER_MAX]
        return f"est-user:{self.user}"

    @property
    def requester(self) -> str:
        if self.user is not None:
            return f"est-user:{self.user}"
        assert self.peer is not None
        return ("est-cert:" + self.peer.certificate.subject.rfc4514_string())[:OWNER_MAX]


@dataclass(frozen=True)
class Held:
    """The request waits for an operator: 202 with Retry-After."""

    request_id: int
    retry_after: int


@dataclass(frozen=True)
class Enrolled:
    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes | None = None


def authenticate(
    core: CACore,
    verifier: BasicVerifier,
    label: Label,
    operation: str,
    authorization: str | None,
    peer: PeerCertificate | None,
) -> Identity:
    """Apply the label's auth policy; raises Unauthorized (401) or Forbidden (403) with a reason.

    simplereenroll always needs the certificate being renewed as the client certificate
    (RFC 7030 §4.2.2), whatever else the label asks for.
    """
    now = core.now()
    user = None
    credentials = parse_basic(authorization) if label.accepts_basic else None
    if credentials is not None:
        found = verifier.verify(credentials[0], credentials[1], label.name)
        if found is None:
            raise Unauthorized("the username or password is wrong for this label")
        user = found.username
    ours = None
    certificate_ok = False
    if peer is not None and (label.accepts_certificate or operation == "simplereenroll"):
        ours = issued_by_us(core.database, peer, now)
        if operation == "simplereenroll":
            if ours is None:
                raise Forbidden(
                    "simplereenroll needs the certificate being renewed, issued by this CA, "
                    "as the TLS client certificate"
                )
            if ours.profile not in label.reenroll_profiles:
                raise Forbidden(
                    f'the client certificate was issued for profile "{ours.profile}", which '
                    f'label "{label.name}" does not renew'
                )
            certificate_ok = True
        elif ours is not None:
            certificate_ok = label.accept_issued_certificates
        else:
            certificate_ok = under_trust_anchor(label, peer.certificate, now)
        if not certificate_ok and label.auth in ("cert", "both"):
            raise Forbidden(
                f'the client certificate is not from a trust anchor of label "{label.name}"'
            )
    if operation == "simplereenroll":
        if not certificate_ok:
            raise Unauthorized(
                "simplereenroll needs the certificate being renewed as the TLS client certificate"
            )
        if label.auth == "both" and user is None:
            raise Unauthorized(f'label "{label.name}" also needs HTTP Basic credentials')
        return Identity(user, peer, ours)
    if label.auth == "basic" and user is None:
        raise Unauthorized(f'label "{label.name}" needs HTTP Basic credentials')
    if label.auth == "cert" and not certificate_ok:
        raise Unauthorized(f'label "{label.name}" needs a TLS client certificate')
    if label.auth == "both" and (user is None or not certificate_ok):
        raise Unauthorized(
            f'label "{label.name}" needs both a TLS client certificate and HTTP Basic credentials'
        )
    if label.auth == "any" and user is None and not certificate_ok:
        raise Unauthorized(
            f'label "{label.name}" needs HTTP Basic credentials or a TLS client certificate'
        )
    return Identity(user, peer if certificate_ok else None, ours if certificate_ok else None)


def check_channel_binding(label: Label, csr: ParsedCSR, binding: bytes | None) -> None:
    """RFC 7030 §3.5: challengePassword must be base64(tls-unique) of this very connection."""
    if not label.require_channel_binding:
        return
    if binding is None:
        raise Forbidden(
            f'label "{label.name}" requires the CSR to be bound to the TLS session (tls-unique '
            "in challengePassword), which exists only for TLS 1.2 connections made directly "
            "to this server"
        )
    expected = base64.b64encode(binding).decode()
    if csr.challenge_password is None or not hmac.compare_digest(
        csr.challenge_password.strip().encode(), expected.encode()
    ):
        raise Forbidden(
            "the CSR's challengePassword is not the tls-unique value of this TLS session "
            "(RFC 7030 section 3.5)"
        )


def check_reenrollment(label: Label, csr: ParsedCSR, current: x509.Certificate) -> None:
    """RFC 7030 §4.2.2: subject and subjectAltName stay those of the certificate renewed."""
    if label.allow_subject_change:
        return
    try:
        current_names = set(identifiers_from_extensions(current.extensions))
    except CoreError:
        current_names = set()
    if csr.subject != current.subject or set(csr.identifiers) != current_names:
        raise Forbidden(
            "simplereenroll must keep the subject and subjectAltName of the certificate being "
            f'renewed (RFC 7030 section 4.2.2); label "{label.name}" does not allow a change'
        )


def reject_key_encryption(csr_der: bytes) -> None:
    csr = x509.load_der_x509_csr(csr_der)
    for attribute in csr.attributes:
        if attribute.oid.dotted_string in _KEY_ENCRYPTION_ATTRIBUTES:
            raise NotSupported(
                "serverkeygen returns the private key protected by TLS only; encrypting it to "
                "a key of the client (DecryptKeyIdentifier, AsymmetricDecryptKeyIdentifier) "
                "is not supported"
            )


def generate_key(label: Label, csr: ParsedCSR) -> CertificateIssuerPrivateKeyTypes:
    """serverkeygen's key: the label's key_type, else the algorithm and size of the CSR's key."""
    key_type = label.key_type
    if key_type is None:
        public = csr.public_key
        if isinstance(public, rsa.RSAPublicKey):
            key_type = f"rsa-{public.key_size}" if public.key_size in (3072, 4096) else "rsa-2048"
        elif isinstance(public, ec.EllipticCurvePublicKey):
            key_type = "ec-p384" if public.curve.name == "secp384r1" else "ec-p256"
        else:
            key_type = "ed25519"
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(65537, int(key_type[4:]))
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def pkcs8(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def enroll(
    core: CACore,
    label: Label,
    operation: str,
    identity: Identity,
    csr: ParsedCSR,
) -> Enrolled | Held:
    """Issue now, or hold for approval when the label asks for it (re-enrollment is not held)."""
    if label.manual_approval and operation in ("simpleenroll", "serverkeygen"):
        return _through_approval(core, label, operation, identity, csr)
    return _issue(core, label, operation, identity, csr)


def _issue(
    core: CACore, label: Label, operation: str, identity: Identity, csr: ParsedCSR
) -> Enrolled:
    private_key = generate_key(label, csr) if operation == "serverkeygen" else None
    public_key = private_key.public_key() if private_key is not None else csr.public_key
    issued = core.issue(
        IssuanceRequest(
            channel="est",
            requester=identity.requester,
            profile=label.profile,
            public_key=public_key,
            identifiers=csr.identifiers,
            subject=csr.subject,
            requested_ekus=csr.requested_ekus,
            owner=identity.owner,
            csr_der=csr.der,
            metadata={"est_label": label.name, "est_operation": operation},
        )
    )
    log.info(
        "est %s on label %s: issued serial %s to %s",
        operation,
        label.name,
        issued.serial_hex,
        identity.owner,
    )
    return Enrolled(issued.certificate, private_key)


def request_key(label: Label, operation: str, owner: str, csr_der: bytes) -> str:
    digest = hashlib.sha256()
    for part in (label.name.encode(), operation.encode(), owner.encode(), csr_der):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()


def _through_approval(
    core: CACore, label: Label, operation: str, identity: Identity, csr: ParsedCSR
) -> Enrolled | Held:
    key = request_key(label, operation, identity.owner, csr.der)
    with core.database.write() as session:
        held = storage.latest_request(session, key)
        if held is None or (held.status == "issued" and not _reusable(held, operation)):
            return _hold(core, session, label, operation, identity, csr, key)
        if held.status == "pending":
            return Held(held.id, label.retry_after)
        if held.status == "rejected":
            reason = f": {held.reason}" if held.reason else ""
            raise Forbidden(f"an operator rejected this enrollment request (#{held.id}){reason}")
        if held.status == "issued":
            # The device lost the answer and asks again: hand it the same certificate.
            certificate = _still_valid(core, session, held.certificate_id)
            if certificate is not None:
                return Enrolled(certificate)
            if held.certificate_id is None:
                return Held(held.id, 5)  # another request of the device is being issued
            return _hold(core, session, label, operation, identity, csr, key)
        claimed = storage.claim_approved(session, held.id)
    if not claimed:
        return Held(held.id, 5)
    try:
        enrolled = _issue(core, label, operation, identity, csr)
    except BaseException:
        with core.database.write() as session:
            storage.release_claim(session, held.id)
        raise
    with core.database.write() as session:
        row = certificate_store.find_by_fingerprint(
            session,
            hashlib.sha256(
                enrolled.certificate.public_bytes(serialization.Encoding.DER)
            ).hexdigest(),
        )
        if row is not None:
            storage.record_certificate(session, held.id, row.id)
    return enrolled


def _reusable(held: storage.ESTRequest, operation: str) -> bool:
    # serverkeygen's key was never stored, so its certificate cannot be handed out twice.
    return operation != "serverkeygen"


def _still_valid(core: CACore, session: Any, certificate_id: int | None) -> x509.Certificate | None:
    if certificate_id is None:
        return None
    row = session.get(CertificateRow, certificate_id)
    if row is None or row.status != "issued" or row.der is None or row.not_after <= core.now():
        return None
    return x509.load_der_x509_certificate(row.der)


def _hold(
    core: CACore,
    session: Any,
    label: Label,
    operation: str,
    identity: Identity,
    csr: ParsedCSR,
    key: str,
) -> Held:
    sans = [str(i) for i in csr.identifiers]
    held = storage.insert_request(
        session,
        request_key=key,
        label=label.name,
        operation=operation,
        owner=identity.owner,
        csr_der=csr.der,
        subject=csr.subject.rfc4514_string(),
        sans=sans,
        now=core.now(),
    )
    core.audit(
        session,
        actor=identity.requester,
        channel="est",
        action="est_request_held",
        object=f"est_request:{held.id}",
        details={
            "label": label.name,
            "operation": operation,
            "owner": identity.owner,
            "subject": held.subject,
            "sans": sans,
        },
    )
    return Held(held.id, label.retry_after)


def decide(
    core: CACore, request_id: int, *, approve: bool, actor: str, channel: str, reason: str | None
) -> storage.ESTRequest:
    """Approve or reject a held request (CLI and admin API); raises NotFound or Conflict."""
    from ca.errors import Conflict, NotFound

    with core.database.write() as session:
        held = storage.get_request(session, request_id)
        if held is None:
            raise NotFound(f"no EST request #{request_id}")
        status = "approved" if approve else "rejected"
        if not storage.decide_request(
            session, request_id, status=status, decided_by=actor, reason=reason, now=core.now()
        ):
            raise Conflict(f"EST request #{request_id} is {held.status}, not pending")
        core.audit(
            session,
            actor=actor,
            channel=channel,
            action=f"est_request_{status}",
            object=f"est_request:{request_id}",
            details={
                "label": held.label,
                "operation": held.operation,
                "owner": held.owner,
                "subject": held.subject,
                "sans": list(held.sans),
                "reason": reason,
            },
        )
        result = storage.get_request(session, request_id)
    assert result is not None
    return result
