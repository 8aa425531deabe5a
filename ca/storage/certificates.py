"""Repository functions for the certificates table. They take a Session and never commit."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, bindparam, insert, select, update
from sqlalchemy.orm import Session

from ca.storage import bulk
from ca.storage.models import CertificateRow


@dataclass(frozen=True)
class PendingCertificate:
    issuer_id: int
    serial: int
    tbs_sha256: bytes
    subject: str
    sans: Sequence[str]
    profile: str
    channel: str
    requester: str
    owner: str | None
    public_key_sha256: str
    not_before: datetime
    not_after: datetime


def serial_hex(serial: int) -> str:
    """The stored form of a serial number: lower-case hex, no leading zeros."""
    return format(serial, "x")


# Built once, on the table rather than the mapped class: constructing statements per call, and
# the ORM's bulk-insert machinery, cost more than executing them on SQLite.
_TABLE = CertificateRow.__table__
_INSERT_PENDING = insert(_TABLE).returning(_TABLE.c.id)
_MARK_ISSUED = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("row_id"), _TABLE.c.status == "pending")
    .values(
        status="issued",
        der=bindparam("der"),
        fingerprint_sha256=bindparam("fingerprint"),
        issued_at=bindparam("now"),
        status_changed_at=bindparam("now"),
    )
)


def _pending_values(pending: PendingCertificate, now: datetime) -> dict[str, object]:
    return {
        "issuer_id": pending.issuer_id,
        "serial": serial_hex(pending.serial),
        "status": "pending",
        "tbs_sha256": pending.tbs_sha256,
        "subject": pending.subject,
        "sans": json.dumps(list(pending.sans)),
        "profile": pending.profile,
        "channel": pending.channel,
        "requester": pending.requester,
        "owner": pending.owner,
        "public_key_sha256": pending.public_key_sha256,
        "not_before": pending.not_before,
        "not_after": pending.not_after,
        "created_at": now,
        "status_changed_at": now,
    }


def insert_pending(session: Session, pending: PendingCertificate, now: datetime) -> int:
    """Reserve the serial: a unique (issuer, serial) row in status "pending" with the TBS hash.

    Returns the row id.
    """
    return insert_pending_many(session, [(pending, now)])[0]


def insert_pending_many(
    session: Session, pendings: Sequence[tuple[PendingCertificate, datetime]]
) -> list[int]:
    """`insert_pending` for several (pending, now) in one statement; row ids in the order given.

    One duplicate (issuer, serial) fails the whole statement with IntegrityError.
    """
    rows = [_pending_values(pending, now) for pending, now in pendings]
    connection = session.connection()
    if len(rows) == 1 and not bulk.driver_level(connection):
        return [connection.execute(_INSERT_PENDING, rows[0]).scalar_one()]
    inserted = bulk.insert_many(connection, _TABLE, rows, returning=("id", "issuer_id", "serial"))
    # (issuer, serial) is unique, so it names each new row whatever order RETURNING gives.
    ids = {(row.issuer_id, row.serial): row.id for row in inserted}
    return [ids[(row["issuer_id"], row["serial"])] for row in rows]


def mark_issued(
    session: Session, row_id: int, der: bytes, fingerprint_sha256: str, now: datetime
) -> None:
    """Pending -> issued; refuses (RuntimeError) if the row is no longer pending."""
    mark_issued_many(session, [(row_id, der, fingerprint_sha256, now)])


def mark_issued_many(session: Session, issued: Sequence[tuple[int, bytes, str, datetime]]) -> None:
    """`mark_issued` for several (row id, DER, SHA-256 hex, now) at once.

    Raises RuntimeError if any of the rows is no longer pending (the caller's transaction must
    then roll back).
    """
    connection = session.connection()
    if len(issued) == 1 and not bulk.driver_level(connection):
        row_id, der, fingerprint, now = issued[0]
        parameters = {"row_id": row_id, "der": der, "fingerprint": fingerprint, "now": now}
        changed = connection.execute(_MARK_ISSUED, parameters).rowcount
    else:
        changed = bulk.update_many(
            connection,
            _TABLE,
            "id",
            [
                {
                    "id": row_id,
                    "der": der,
                    "fingerprint_sha256": fingerprint,
                    "issued_at": now,
                    "status_changed_at": now,
                    "status": "issued",
                }
                for row_id, der, fingerprint, now in issued
            ],
            where={"status": "pending"},
        )
    if changed != len(issued):
        raise RuntimeError(
            f"{len(issued) - changed} of {len(issued)} certificate rows are not pending"
        )


def mark_failed(session: Session, row_id: int, now: datetime) -> None:
    session.execute(
        update(CertificateRow)
        .where(CertificateRow.id == row_id, CertificateRow.status == "pending")
        .values(status="failed", status_changed_at=now)
    )


def find_by_serial(
    session: Session, serial: str, issuer_id: int | None = None
) -> list[CertificateRow]:
    statement = select(CertificateRow).where(CertificateRow.serial == serial)
    if issuer_id is not None:
        statement = statement.where(CertificateRow.issuer_id == issuer_id)
    return list(session.scalars(statement))


def find_by_fingerprint(session: Session, fingerprint_sha256: str) -> CertificateRow | None:
    return session.scalars(
        select(CertificateRow).where(CertificateRow.fingerprint_sha256 == fingerprint_sha256)
    ).first()


def query_certificates(
    *,
    issuer_id: int | None = None,
    status: str | None = None,
    not_after_before: datetime | None = None,
    not_after_after: datetime | None = None,
    owner: str | None = None,
    profile: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> Select[tuple[CertificateRow]]:
    """A listing ordered by id (keyset pagination with `after_id`)."""
    statement = select(CertificateRow).where(CertificateRow.id > after_id)
    if issuer_id is not None:
        statement = statement.where(CertificateRow.issuer_id == issuer_id)
    if status is not None:
        statement = statement.where(CertificateRow.status == status)
    if not_after_before is not None:
        statement = statement.where(CertificateRow.not_after < not_after_before)
    if not_after_after is not None:
        statement = statement.where(CertificateRow.not_after >= not_after_after)
    if owner is not None:
        statement = statement.where(CertificateRow.owner == owner)
    if profile is not None:
        statement = statement.where(CertificateRow.profile == profile)
    return statement.order_by(CertificateRow.id).limit(limit)
