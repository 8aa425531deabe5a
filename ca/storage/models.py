"""The core's tables. Front ends add their own tables in their own migrations, never here.

Rules that must hold whatever the code does live in the schema too: unique (issuer, serial),
status values, the audit sequence as primary key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every engine (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


CERT_STATUSES = ("pending", "issued", "revoked", "failed")


class IssuerRow(Base):
    """A CA known to this deployment: the root and each issuing CA (certificate may be awaited)."""

    __tablename__ = "issuers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_uri: Mapped[str] = mapped_column(String(512))
    key_type: Mapped[str] = mapped_column(String(16))
    parent_name: Mapped[str | None] = mapped_column(String(64))
    certificate_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    csr_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    subject_key_id: Mapped[bytes | None] = mapped_column(LargeBinary)
    # SHA-1 of the subject name and of the public key, for OCSP CertID lookups (RFC 6960 §4.1.1).
    name_hash_sha1: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_hash_sha1: Mapped[bytes | None] = mapped_column(LargeBinary)
    name_hash_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_hash_sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CertificateRow(Base):
    """Every certificate from the moment its serial is reserved; DER only once it is issued."""

    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("issuer_id", "serial", name="uq_certificates_issuer_serial"),
        CheckConstraint(
            "status in ('pending', 'issued', 'revoked', 'failed')", name="ck_certificates_status"
        ),
        CheckConstraint("length(serial) <= 40", name="ck_certificates_serial_len"),
        Index("ix_certificates_not_after", "not_after"),
        Index("ix_certificates_status_changed", "issuer_id", "status_changed_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("issuers.id"))
    # Lower-case hex without leading zeros: up to 20 octets (RFC 5280 §4.1.2.2) do not fit BIGINT.
    serial: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    tbs_sha256: Mapped[bytes] = mapped_column(LargeBinary)
    der: Mapped[bytes | None] = mapped_column(LargeBinary)
    fingerprint_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(Text)
    sans: Mapped[str] = mapped_column(Text)  # JSON list of "type:value"
    profile: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    requester: Mapped[str] = mapped_column(String(256))
    owner: Mapped[str | None] = mapped_column(String(256), index=True)
    public_key_sha256: Mapped[str] = mapped_column(String(64), index=True)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revocation_reason: Mapped[int | None] = mapped_column(Integer)
    invalidity_date: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Bumped on every change OCSP and CRL care about, so their jobs can find what to refresh.
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEntryRow(Base):
    """One link of the hash-chained audit log; `seq` has no gaps, starting at 1."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(256))
    channel: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(256))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """A single row naming the chain's tip; locking it serialises appends across processes."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpointRow(Base):
    """The audit key's signature over (seq, hash) of an entry: the tail cannot be cut behind it."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    key_uri: Mapped[str] = mapped_column(String(512))
    algorithm: Mapped[str] = mapped_column(String(32))
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class JobRow(Base):
    """A persisted background job; `unique_key` lets a caller debounce (one queued job per key)."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status in ('queued', 'running', 'done', 'failed')", name="ck_jobs_status"),
        Index("ix_jobs_due", "status", "run_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    unique_key: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    last_error: Mapped[str | None] = mapped_column(Text)
    locked_by: Mapped[str | None] = mapped_column(String(128))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class APITokenRow(Base):
    """An admin API bearer token; only its SHA-256 is kept (the token has 256 random bits)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(256))  # space-separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CRLRow(Base):
    """One signed CRL (RFC 5280 §5) of an issuer; `shard` 0 is the issuer's whole CRL.

    The number is reserved first (a row with `der` NULL) and the CRL is signed after: the unique
    (issuer, shard, number) constraint keeps CRL numbers strictly increasing per scope however
    many processes generate at once. Complete and delta CRLs of a scope share one sequence
    (RFC 5280 §5.2.4).
    """

    __tablename__ = "crls"
    __table_args__ = (
        UniqueConstraint("issuer_id", "shard", "number", name="uq_crls_issuer_shard_number"),
        CheckConstraint("shard >= 0", name="ck_crls_shard"),
        CheckConstraint("number > 0", name="ck_crls_number"),
        Index("ix_crls_latest", "issuer_id", "shard", "delta", "number"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("issuers.id"))
    shard: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(BigInteger)
    delta: Mapped[bool] = mapped_column(Boolean)
    # The complete CRL a delta CRL extends (its Delta CRL Indicator); None on complete CRLs.
    base_number: Mapped[int | None] = mapped_column(BigInteger)
    this_update: Mapped[datetime] = mapped_column(UTCDateTime())
    next_update: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    entries: Mapped[int] = mapped_column(Integer, default=0)
    der: Mapped[bytes | None] = mapped_column(LargeBinary)
