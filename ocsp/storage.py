"""The responder's tables: pre-signed OCSP responses and delegated responder certificates.

Only this module knows the SQL dialect for the one upsert the responder needs; everything else
takes a Session and leaves the transaction to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, MetaData, String, and_, or_
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ca.storage import MigrationSet
from ca.storage.models import UTCDateTime


class Base(DeclarativeBase):
    metadata = MetaData()


class OCSPResponseRow(Base):
    """The current pre-signed response for one certificate (good or revoked) and CertID hash."""

    __tablename__ = "ocsp_responses"
    __table_args__ = (Index("ix_ocsp_responses_next_update", "next_update"),)

    # The core's certificates.id; no foreign key across the two migration sets on purpose, so
    # the core's schema never depends on a front end's.
    certificate_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    # The CertID hash the response answers (sha1 or sha256): clients match it exactly.
    hash_algorithm: Mapped[str] = mapped_column(String(8), primary_key=True)
    issuer_id: Mapped[int] = mapped_column(Integer)
    serial: Mapped[str] = mapped_column(String(40))
    cert_status: Mapped[str] = mapped_column(String(8))  # good | revoked
    # The certificate's status_changed_at the response was signed for: older means stale.
    cert_status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    produced_at: Mapped[datetime] = mapped_column(UTCDateTime())
    this_update: Mapped[datetime] = mapped_column(UTCDateTime())
    next_update: Mapped[datetime] = mapped_column(UTCDateTime())
    responder: Mapped[str] = mapped_column(String(64))  # SHA-1 key hash of the signing key, hex
    der: Mapped[bytes] = mapped_column(LargeBinary)


class OCSPResponderRow(Base):
    """A delegated responder certificate (id-kp-OCSPSigning) for one issuer, newest wins."""

    __tablename__ = "ocsp_responders"
    __table_args__ = (Index("ix_ocsp_responders_issuer", "issuer_id", "not_after"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer_id: Mapped[int] = mapped_column(Integer)
    key_label: Mapped[str] = mapped_column(String(128))
    public_key_sha256: Mapped[str] = mapped_column(String(64))
    serial: Mapped[str] = mapped_column(String(40))
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


MIGRATIONS = MigrationSet(
    Path(__file__).parent / "migrations", Base.metadata, "privca_ocsp_version"
)

_UPSERT_COLUMNS = (
    "issuer_id",
    "serial",
    "cert_status",
    "cert_status_changed_at",
    "produced_at",
    "this_update",
    "next_update",
    "responder",
    "der",
)


def upsert_responses(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or replace pre-signed responses by (certificate, hash) in one statement.

    A "good" response never replaces a "revoked" one, and otherwise only a response signed for
    the same or a newer status change replaces the stored one: a slow signer cannot bring back
    an older status (statuses only move from good to revoked).
    """
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(OCSPResponseRow)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[OCSPResponseRow.certificate_id, OCSPResponseRow.hash_algorithm],
        set_={name: getattr(excluded, name) for name in _UPSERT_COLUMNS},
        where=or_(
            excluded.cert_status == "revoked",
            and_(
                OCSPResponseRow.cert_status != "revoked",
                OCSPResponseRow.cert_status_changed_at <= excluded.cert_status_changed_at,
            ),
        ),
    )
    session.execute(statement, list(rows))
