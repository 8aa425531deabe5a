"""EST's own tables: Basic credentials (argon2id hashes) and enrollment requests held for approval.

Certificates, revocations and audit entries stay in the core's tables; these rows only say who may
enroll and which requests wait for an operator. Repository functions take a Session and never
commit (the caller owns the transaction, ca/storage's rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    bindparam,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ca.storage import MigrationSet
from ca.storage.models import UTCDateTime

REQUEST_STATUSES = ("pending", "approved", "rejected", "issued")


class ESTBase(DeclarativeBase):
    pass


class ESTUserRow(ESTBase):
    """A Basic credential: per device (one device, one name) or per label (shared by a batch).

    `label` None means every label whose auth accepts Basic; only the argon2id hash is kept.
    """

    __tablename__ = "est_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    label: Mapped[str | None] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(256))


class ESTRequestRow(ESTBase):
    """An enrollment held for manual approval; the same request again finds it by `request_key`."""

    __tablename__ = "est_requests"
    __table_args__ = (
        CheckConstraint(
            "status in ('pending', 'approved', 'rejected', 'issued')", name="ck_est_requests_status"
        ),
        Index("ix_est_requests_key", "request_key"),
        Index("ix_est_requests_status", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # sha256 over label, operation, device identity and CSR: "the next identical request".
    request_key: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    operation: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(256))
    csr_der: Mapped[bytes] = mapped_column(LargeBinary)
    subject: Mapped[str] = mapped_column(Text)
    sans: Mapped[str] = mapped_column(Text)  # JSON list of "type:value"
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(256))
    # The certificate handed out for it (the core's certificates.id), once issued.
    certificate_id: Mapped[int | None] = mapped_column(BigInteger)


MIGRATIONS = MigrationSet(
    Path(__file__).parent / "migrations", ESTBase.metadata, "privca_est_version"
)


# -- users -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ESTUser:
    id: int
    username: str
    label: str | None
    password_hash: str
    created_at: datetime
    created_by: str

    def describe(self) -> dict[str, object]:
        """Safe to show: never the hash."""
        return {
            "id": self.id,
            "username": self.username,
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


def _user(row: ESTUserRow) -> ESTUser:
    return ESTUser(
        row.id, row.username, row.label, row.password_hash, row.created_at, row.created_by
    )


# Built once: find_user runs on every Basic-authenticated request, and building the statement
# and its cache key anew costs about as much as running it.
_FIND_USER = select(
    ESTUserRow.id,
    ESTUserRow.username,
    ESTUserRow.label,
    ESTUserRow.password_hash,
    ESTUserRow.created_at,
    ESTUserRow.created_by,
).where(ESTUserRow.username == bindparam("username"))


def find_user(session: Session, username: str) -> ESTUser | None:
    """The credential named `username`, or None.

    Reads plain columns on the session's connection: the ORM's entity loading would cost twice
    as much for one row that nobody modifies.
    """
    row = session.connection().execute(_FIND_USER, {"username": username}).first()
    return ESTUser(*row) if row is not None else None


def insert_user(
    session: Session,
    username: str,
    label: str | None,
    password_hash: str,
    created_by: str,
    now: datetime,
) -> ESTUser:
    row = ESTUserRow(
        username=username,
        label=label,
        password_hash=password_hash,
        created_at=now,
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    return _user(row)


def list_users(session: Session) -> list[ESTUser]:
    return [_user(r) for r in session.scalars(select(ESTUserRow).order_by(ESTUserRow.username))]


def delete_user(session: Session, username: str) -> ESTUser | None:
    row = session.scalars(select(ESTUserRow).where(ESTUserRow.username == username)).first()
    if row is None:
        return None
    user = _user(row)
    session.delete(row)
    session.flush()
    return user


# -- requests held for approval ---------------------------------------------------------------


@dataclass(frozen=True)
class ESTRequest:
    id: int
    request_key: str
    label: str
    operation: str
    owner: str
    csr_der: bytes
    subject: str
    sans: tuple[str, ...]
    status: str
    reason: str | None
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    certificate_id: int | None

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "label": self.label,
            "operation": self.operation,
            "owner": self.owner,
            "subject": self.subject,
            "sans": list(self.sans),
            "status": self.status,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "certificate_id": self.certificate_id,
        }


def _request(row: ESTRequestRow) -> ESTRequest:
    return ESTRequest(
        id=row.id,
        request_key=row.request_key,
        label=row.label,
        operation=row.operation,
        owner=row.owner,
        csr_der=row.csr_der,
        subject=row.subject,
        sans=tuple(json.loads(row.sans)),
        status=row.status,
        reason=row.reason,
        created_at=row.created_at,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        certificate_id=row.certificate_id,
    )


def latest_request(session: Session, request_key: str) -> ESTRequest | None:
    row = session.scalars(
        select(ESTRequestRow)
        .where(ESTRequestRow.request_key == request_key)
        .order_by(ESTRequestRow.id.desc())
        .limit(1)
    ).first()
    return _request(row) if row is not None else None


def insert_request(
    session: Session,
    *,
    request_key: str,
    label: str,
    operation: str,
    owner: str,
    csr_der: bytes,
    subject: str,
    sans: list[str],
    now: datetime,
) -> ESTRequest:
    row = ESTRequestRow(
        request_key=request_key,
        label=label,
        operation=operation,
        owner=owner,
        csr_der=csr_der,
        subject=subject,
        sans=json.dumps(sans),
        status="pending",
        created_at=now,
    )
    session.add(row)
    session.flush()
    return _request(row)


def get_request(session: Session, request_id: int) -> ESTRequest | None:
    row = session.get(ESTRequestRow, request_id)
    return _request(row) if row is not None else None


def list_requests(
    session: Session, status: str | None = None, limit: int = 1000
) -> list[ESTRequest]:
    statement = select(ESTRequestRow).order_by(ESTRequestRow.id).limit(limit)
    if status is not None:
        statement = statement.where(ESTRequestRow.status == status)
    return [_request(r) for r in session.scalars(statement)]


def decide_request(
    session: Session,
    request_id: int,
    *,
    status: str,
    decided_by: str,
    reason: str | None,
    now: datetime,
) -> bool:
    """Pending -> approved or rejected; False if the request is not (or no longer) pending."""
    result = session.execute(
        update(ESTRequestRow)
        .where(ESTRequestRow.id == request_id, ESTRequestRow.status == "pending")
        .values(status=status, decided_by=decided_by, reason=reason, decided_at=now)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def claim_approved(session: Session, request_id: int) -> bool:
    """Approved -> issued, so that of two identical requests in flight only one issues."""
    result = session.execute(
        update(ESTRequestRow)
        .where(ESTRequestRow.id == request_id, ESTRequestRow.status == "approved")
        .values(status="issued")
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def release_claim(session: Session, request_id: int) -> None:
    """Issued -> approved again after the core refused or failed, so a retry can succeed."""
    session.execute(
        update(ESTRequestRow)
        .where(ESTRequestRow.id == request_id, ESTRequestRow.status == "issued")
        .values(status="approved", certificate_id=None)
    )


def record_certificate(session: Session, request_id: int, certificate_id: int) -> None:
    session.execute(
        update(ESTRequestRow)
        .where(ESTRequestRow.id == request_id)
        .values(certificate_id=certificate_id)
    )
