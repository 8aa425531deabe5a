"""Revocation: RFC 5280 reason codes, invalidity dates, audited, and visible to OCSP and CRLs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from sqlalchemy import select

from ca.errors import AlreadyRevoked, BadRequest, Conflict, NotFound
from ca.storage.models import CertificateRow

if TYPE_CHECKING:
    from ca.core import CACore

# RFC 5280 §5.3.1 CRLReason. certificateHold (6) and removeFromCRL (8) are not offered: a hold
# that can be lifted would need un-revocation, which this CA does not do.
REASONS: dict[str, int] = {
    "unspecified": 0,
    "keyCompromise": 1,
    "cACompromise": 2,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "privilegeWithdrawn": 9,
    "aACompromise": 10,
}
REASON_NAMES = {code: name for name, code in REASONS.items()}
_CODE_TEXTS = frozenset(str(code) for code in REASON_NAMES)  # "1"; not "01" nor other digits
X509_REASON_FLAGS = {
    0: x509.ReasonFlags.unspecified,
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


def parse_reason(value: str | int | None) -> int:
    """A reason name (keyCompromise) or code (1); None means unspecified. Raises BadRequest."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value in REASON_NAMES:
            return value
    elif isinstance(value, str):
        if value in REASONS:
            return REASONS[value]
        if value in _CODE_TEXTS:
            return int(value)
    raise BadRequest(f'unknown revocation reason "{value}"; use one of {", ".join(REASONS)}')


@dataclass(frozen=True)
class Revocation:
    issuer: str
    serial: str
    reason: int
    revoked_at: datetime
    invalidity_date: datetime | None

    @property
    def reason_name(self) -> str:
        return REASON_NAMES[self.reason]


def revoke(
    core: CACore,
    serial: str,
    *,
    issuer_name: str | None = None,
    reason: int = 0,
    invalidity_date: datetime | None = None,
    actor: str,
    channel: str,
) -> Revocation:
    """Revoke an issued certificate by serial (hex); raises NotFound, AlreadyRevoked or Conflict."""
    serial = normalise_serial(serial)
    if reason not in REASON_NAMES:
        raise BadRequest(f"revocation reason code {reason} is not allowed")
    now = core.now()
    if invalidity_date is not None and invalidity_date > now:
        raise BadRequest("invalidity date must not be in the future")
    issuer_ids = None
    if issuer_name is not None:
        issuer = core.issuers.get(issuer_name)
        if issuer is None:
            raise NotFound(f'no issuer named "{issuer_name}"')
        issuer_ids = issuer.id
    with core.database.write() as session:
        statement = core.database.for_update(
            select(CertificateRow).where(CertificateRow.serial == serial)
        )
        if issuer_ids is not None:
            statement = statement.where(CertificateRow.issuer_id == issuer_ids)
        rows = list(session.scalars(statement))
        if not rows:
            raise NotFound(f"no certificate with serial {serial}")
        if len(rows) > 1:
            raise Conflict(f"serial {serial} exists under several issuers; name the issuer")
        row = rows[0]
        issuer = core.issuer_by_id(row.issuer_id)
        name = issuer.name if issuer is not None else str(row.issuer_id)
        if row.status == "revoked":
            raise AlreadyRevoked(
                f"certificate {serial} was already revoked at {row.revoked_at.isoformat()}"
                f" ({REASON_NAMES.get(row.revocation_reason or 0, 'unspecified')})"
            )
        if row.status != "issued":
            raise Conflict(f"certificate {serial} was never issued (status {row.status})")
        row.status = "revoked"
        row.revoked_at = now
        row.revocation_reason = reason
        row.invalidity_date = invalidity_date
        row.status_changed_at = now
        core.audit(
            session,
            actor=actor,
            channel=channel,
            action="certificate_revoked",
            object=f"certificate:{name}:{serial}",
            details={
                "issuer": name,
                "serial": serial,
                "reason": REASON_NAMES[reason],
                "invalidity_date": invalidity_date.isoformat() if invalidity_date else None,
            },
        )
        if issuer is not None:
            core.after_revocation(session, issuer, row.id)
    core.metrics.revocations.labels(channel=channel, reason=REASON_NAMES[reason]).inc()
    return Revocation(name, serial, reason, now, invalidity_date)


def normalise_serial(serial: str) -> str:
    """Accept hex with or without colons, 0x or leading zeros; store form is bare lower-case hex."""
    text = serial.strip().lower().replace(":", "").removeprefix("0x").lstrip("0") or "0"
    if len(text) > 40 or any(c not in "0123456789abcdef" for c in text):
        raise BadRequest(f'"{serial}" is not a hexadecimal serial number of at most 20 octets')
    return text
