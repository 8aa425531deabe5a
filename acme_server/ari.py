"""ACME Renewal Information (RFC 9773): suggested renewal windows, `replaces`, and operator
overrides that pull windows forward (for example after a mass revocation).

A certificate's CertID is base64url(AKI keyIdentifier) "." base64url(serial DER bytes). The
default window runs from `ari.window_start` to `ari.window_end` of the certificate's lifetime;
a revoked certificate gets a window in the past (renew now); an override row wins over both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from acme_server.jws import b64decode, b64encode
from acme_server.problems import ACMEProblem
from acme_server.storage import AccountRow, OrderRow, RenewalOverrideRow
from ca.errors import BadRequest, NotFound
from ca.revocation import normalise_serial
from ca.storage.models import CertificateRow

if TYPE_CHECKING:
    from acme_server.context import ACMEContext
    from ca.core import CACore


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    explanation_url: str | None = None


def cert_id(authority_key_id: bytes, serial: int) -> str:
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    return f"{b64encode(authority_key_id)}.{b64encode(serial_bytes)}"


def find_certificate(acme: ACMEContext, session: Session, value: Any) -> CertificateRow:
    """The core's row for a CertID; raises malformed (400) or a 404 malformed when unknown."""
    if not isinstance(value, str) or value.count(".") != 1:
        raise ACMEProblem("malformed", "a CertID is base64url(keyIdentifier).base64url(serial)")
    key_part, serial_part = value.split(".")
    key_id = b64decode(key_part, "CertID keyIdentifier")
    serial_bytes = b64decode(serial_part, "CertID serial")
    if not serial_bytes or not key_id or serial_bytes[0] & 0x80:
        raise ACMEProblem("malformed", "the CertID is malformed")
    serial = format(int.from_bytes(serial_bytes, "big"), "x")
    issuer = next((i for i in acme.core.issuers.values() if i.subject_key_id == key_id), None)
    if issuer is None:
        raise ACMEProblem("malformed", "no certificate with this CertID", status=404)
    row = session.scalars(
        select(CertificateRow).where(
            CertificateRow.issuer_id == issuer.id, CertificateRow.serial == serial
        )
    ).first()
    if row is None or row.status not in ("issued", "revoked"):
        raise ACMEProblem("malformed", "no certificate with this CertID", status=404)
    return row


def window_for(acme: ACMEContext, session: Session, row: CertificateRow, now: datetime) -> Window:
    settings = acme.settings.ari
    if row.status == "revoked":
        return Window(now - timedelta(hours=2), now - timedelta(hours=1), settings.explanation_url)
    override = session.scalars(
        select(RenewalOverrideRow)
        .where(
            or_(
                (RenewalOverrideRow.serial == row.serial)
                & (
                    (RenewalOverrideRow.issuer_id == row.issuer_id)
                    | RenewalOverrideRow.issuer_id.is_(None)
                ),
                (RenewalOverrideRow.serial.is_(None))
                & (RenewalOverrideRow.issued_before > row.created_at)
                & (
                    (RenewalOverrideRow.issuer_id == row.issuer_id)
                    | RenewalOverrideRow.issuer_id.is_(None)
                ),
            )
        )
        .order_by(RenewalOverrideRow.id.desc())
        .limit(1)
    ).first()
    if override is not None:
        return Window(
            override.window_start,
            override.window_end,
            override.explanation_url or settings.explanation_url,
        )
    lifetime = row.not_after - row.not_before
    return Window(
        row.not_before + lifetime * settings.window_start,
        row.not_before + lifetime * settings.window_end,
        settings.explanation_url,
    )


def renewal_info(acme: ACMEContext, value: str, now: datetime) -> dict[str, Any]:
    with acme.core.database.read() as session:
        row = find_certificate(acme, session, value)
        window = window_for(acme, session, row, now)
    from acme_server.context import rfc3339

    body: dict[str, Any] = {
        "suggestedWindow": {"start": rfc3339(window.start), "end": rfc3339(window.end)}
    }
    if window.explanation_url:
        body["explanationURL"] = window.explanation_url
    return body


def check_replaces(acme: ACMEContext, session: Session, account: AccountRow, value: Any) -> None:
    """RFC 9773 §5: the replaced certificate was issued to this account and not replaced yet."""
    row = find_certificate(acme, session, value)
    owned = session.scalars(
        select(OrderRow.id).where(
            OrderRow.certificate_id == row.id, OrderRow.account_id == account.id
        )
    ).first()
    if owned is None:
        raise ACMEProblem("unauthorized", "the certificate named in replaces was not issued to you")
    replaced = session.scalars(
        select(OrderRow.id).where(
            OrderRow.replaces == value,
            OrderRow.status.in_(("pending", "ready", "processing", "valid")),
        )
    ).first()
    if replaced is not None:
        raise ACMEProblem("alreadyReplaced", "another order already replaces this certificate")


def pull_forward(
    core: CACore,
    *,
    serial: str | None,
    issuer_name: str | None,
    issued_before: datetime | None,
    window_hours: int,
    explanation_url: str | None,
    actor: str,
    channel: str,
) -> dict[str, Any]:
    """Suggest renewal now (window from now for `window_hours`) for one certificate (serial) or
    every certificate issued before a time; audited."""
    if (serial is None) == (issued_before is None):
        raise BadRequest("give exactly one of serial or issued_before")
    if window_hours < 1:
        raise BadRequest("the window must last at least one hour")
    issuer_id = None
    if issuer_name is not None:
        issuer = core.issuers.get(issuer_name)
        if issuer is None:
            raise NotFound(f'no issuer named "{issuer_name}"')
        issuer_id = issuer.id
    now = core.now()
    normalised = normalise_serial(serial) if serial is not None else None
    with core.database.write() as session:
        row = RenewalOverrideRow(
            issuer_id=issuer_id,
            serial=normalised,
            issued_before=issued_before,
            window_start=now,
            window_end=now + timedelta(hours=window_hours),
            explanation_url=explanation_url,
            created_at=now,
            created_by=actor,
        )
        session.add(row)
        details = {
            "serial": normalised,
            "issuer": issuer_name,
            "issued_before": issued_before.isoformat() if issued_before else None,
            "window_end": row.window_end.isoformat(),
        }
        core.audit(
            session,
            actor=actor,
            channel=channel,
            action="acme_renewal_pulled_forward",
            object=f"acme-ari:{normalised or 'issued-before'}",
            details=details,
        )
    return {"window_start": now.isoformat(), **details}
