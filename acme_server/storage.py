"""The ACME front end's tables (accounts, orders, authorizations, challenges, used nonces, EAB
keys, rate-limit events, ARI overrides), their migrations, kept apart from the core's schema, and
the statements every order runs, built once.

Public identifiers in URLs are random (`public_id`), so resources cannot be enumerated; the
integer primary keys never leave the server. Certificates stay in the core's table: an order
only points at the core's row id.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column
from sqlalchemy.orm.instrumentation import manager_of_class

from ca.storage import MigrationSet
from ca.storage.models import CertificateRow, UTCDateTime

_BIGINT = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData()


class AccountRow(Base):
    __tablename__ = "acme_accounts"
    __table_args__ = (
        UniqueConstraint("directory", "key_thumbprint", name="uq_acme_accounts_key"),
        CheckConstraint(
            "status in ('valid', 'deactivated', 'revoked')", name="ck_acme_accounts_status"
        ),
    )

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    directory: Mapped[str] = mapped_column(String(64))
    key_thumbprint: Mapped[str] = mapped_column(String(64))
    jwk: Mapped[str] = mapped_column(Text)  # canonical JSON of the public JWK
    status: Mapped[str] = mapped_column(String(16))
    contact: Mapped[str] = mapped_column(Text)  # JSON list
    terms_agreed: Mapped[bool] = mapped_column(Boolean)
    eab_key_id: Mapped[str | None] = mapped_column(String(128))
    owner: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_ip: Mapped[str | None] = mapped_column(String(64))


class OrderRow(Base):
    __tablename__ = "acme_orders"
    __table_args__ = (
        CheckConstraint(
            "status in ('pending', 'ready', 'processing', 'valid', 'invalid')",
            name="ck_acme_orders_status",
        ),
        Index("ix_acme_orders_account", "account_id", "id"),
        Index("ix_acme_orders_replaces", "replaces"),
    )

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("acme_accounts.id"))
    status: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    identifiers: Mapped[str] = mapped_column(Text)  # JSON list of {"type","value"}
    profile: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    replaces: Mapped[str | None] = mapped_column(String(256))
    error: Mapped[str | None] = mapped_column(Text)  # problem document JSON
    certificate_id: Mapped[int | None] = mapped_column(_BIGINT, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuthorizationRow(Base):
    __tablename__ = "acme_authorizations"
    __table_args__ = (
        CheckConstraint(
            "status in ('pending', 'valid', 'invalid', 'deactivated', 'expired', 'revoked')",
            name="ck_acme_authorizations_status",
        ),
        Index(
            "ix_acme_authorizations_reuse",
            "account_id",
            "identifier_type",
            "identifier_value",
            "status",
        ),
    )

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("acme_accounts.id"))
    identifier_type: Mapped[str] = mapped_column(String(8))
    identifier_value: Mapped[str] = mapped_column(String(256))
    wildcard: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OrderAuthorizationRow(Base):
    """Orders share authorizations (reuse), so the link is its own table."""

    __tablename__ = "acme_order_authorizations"

    order_id: Mapped[int] = mapped_column(ForeignKey("acme_orders.id"), primary_key=True)
    authorization_id: Mapped[int] = mapped_column(
        ForeignKey("acme_authorizations.id"), primary_key=True, index=True
    )


class ChallengeRow(Base):
    __tablename__ = "acme_challenges"
    __table_args__ = (
        CheckConstraint(
            "status in ('pending', 'processing', 'valid', 'invalid')",
            name="ck_acme_challenges_status",
        ),
    )

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    authorization_id: Mapped[int] = mapped_column(ForeignKey("acme_authorizations.id"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)


class UsedNonceRow(Base):
    """A nonce that has been presented once; kept until the nonce would have expired anyway."""

    __tablename__ = "acme_used_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SecretRow(Base):
    """Server-side secrets shared by every worker and node (the nonce MAC key)."""

    __tablename__ = "acme_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EABKeyRow(Base):
    """An External Account Binding MAC key; bound to at most one account."""

    __tablename__ = "acme_eab_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(128), unique=True)
    hmac_key: Mapped[bytes] = mapped_column(LargeBinary)
    owner: Mapped[str] = mapped_column(String(256))
    directory: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(256))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    account_id: Mapped[int | None] = mapped_column(ForeignKey("acme_accounts.id"))
    bound_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RateEventRow(Base):
    """One countable event (an order, an issuance, a failed validation, a new account)."""

    __tablename__ = "acme_rate_events"
    __table_args__ = (Index("ix_acme_rate_events_lookup", "limit_name", "key", "at"),)

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True)
    limit_name: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(256))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class RenewalOverrideRow(Base):
    """An operator's ARI override: pull the suggested window forward for some certificates."""

    __tablename__ = "acme_renewal_overrides"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer_id: Mapped[int | None] = mapped_column(Integer)
    serial: Mapped[str | None] = mapped_column(String(40), index=True)
    issued_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_end: Mapped[datetime] = mapped_column(UTCDateTime())
    explanation_url: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(256))


# --- statements every order runs, built once ---------------------------------------------------
# SQLAlchemy memoizes a statement object's cache key, so running the same object again with new
# parameters skips building and hashing the expression (about a third of a one-row lookup's CPU
# in the request path). FOR UPDATE renders nothing on SQLite, whose writers are serialised.

ACCOUNT_BY_KID = select(AccountRow).where(
    AccountRow.public_id == bindparam("public_id"), AccountRow.directory == bindparam("directory")
)
ACCOUNT_FOR_UPDATE = select(AccountRow).where(AccountRow.id == bindparam("id")).with_for_update()
_ACCOUNTS = AccountRow.__table__
_NONCES = UsedNonceRow.__table__
# Spend a nonce only if the account is still valid and holds the key the request was verified
# with (see acme_server.account_cache): no row inserted means "read the account and look again".
SPEND_NONCE_FOR_ACCOUNT = (
    insert(_NONCES)
    .from_select(
        ["nonce", "expires_at"],
        select(
            bindparam("spent_nonce", type_=String()), bindparam("spent_until", type_=UTCDateTime())
        ).where(
            exists().where(
                _ACCOUNTS.c.id == bindparam("account_id"),
                _ACCOUNTS.c.status == "valid",
                _ACCOUNTS.c.key_thumbprint == bindparam("thumbprint"),
            )
        ),
    )
    .execution_options(preserve_rowcount=True)
)  # an INSERT's rowcount is dropped by default

# The reads of the request path are Core statements whose rows become transient ORM objects
# (`row_object`): the ORM's loading machinery costs more than the round trip. Joined columns
# come after the first table's, in table order.
_ORDERS = OrderRow.__table__
_AUTHORIZATIONS = AuthorizationRow.__table__
_ORDER_AUTHORIZATIONS = OrderAuthorizationRow.__table__
_CHALLENGES = ChallengeRow.__table__
_CERTIFICATES = CertificateRow.__table__
# An order and its authorizations' public ids in id order (as order_authorization_urls): one
# row per authorization.
ORDER_AND_AUTHORIZATION_IDS_BY_PUBLIC_ID = (
    select(*_ORDERS.c, _AUTHORIZATIONS.c.public_id)
    .select_from(_ORDERS)
    .outerjoin(_ORDER_AUTHORIZATIONS, _ORDER_AUTHORIZATIONS.c.order_id == _ORDERS.c.id)
    .outerjoin(_AUTHORIZATIONS, _AUTHORIZATIONS.c.id == _ORDER_AUTHORIZATIONS.c.authorization_id)
    .where(_ORDERS.c.public_id == bindparam("public_id"))
    .order_by(_AUTHORIZATIONS.c.id)
)
# An order with its certificate's DER and issuer (the core's row: two columns, read only).
ORDER_AND_CERTIFICATE_BY_PUBLIC_ID = (
    select(*_ORDERS.c, _CERTIFICATES.c.der, _CERTIFICATES.c.issuer_id)
    .select_from(_ORDERS)
    .outerjoin(_CERTIFICATES, _CERTIFICATES.c.id == _ORDERS.c.certificate_id)
    .where(_ORDERS.c.public_id == bindparam("public_id"))
)
# A challenge is owned through its authorization: one round trip for both.
CHALLENGE_AND_AUTHORIZATION_BY_PUBLIC_ID = (
    select(*_CHALLENGES.c, *_AUTHORIZATIONS.c)
    .join(_AUTHORIZATIONS, _AUTHORIZATIONS.c.id == _CHALLENGES.c.authorization_id)
    .where(_CHALLENGES.c.public_id == bindparam("public_id"))
)
CHALLENGE_AND_AUTHORIZATION_FOR_UPDATE = (
    select(ChallengeRow, AuthorizationRow)
    .join(AuthorizationRow, AuthorizationRow.id == ChallengeRow.authorization_id)
    .where(ChallengeRow.id == bindparam("id"))
    .with_for_update(of=ChallengeRow)
)
# An authorization with its challenges in id order (an authorization always has at least one).
AUTHORIZATION_AND_CHALLENGES_BY_PUBLIC_ID = (
    select(*_AUTHORIZATIONS.c, *_CHALLENGES.c)
    .join(_CHALLENGES, _CHALLENGES.c.authorization_id == _AUTHORIZATIONS.c.id)
    .where(_AUTHORIZATIONS.c.public_id == bindparam("public_id"))
    .order_by(_CHALLENGES.c.id)
)

_Row = TypeVar("_Row", bound=Base)


def row_object(cls: type[_Row], values: Sequence[Any], start: int = 0) -> _Row:
    """A transient `cls` (attached to no session) from the columns of its table found in
    `values` from `start`, in table order (as the statements above select them).

    Built as the ORM's own loader builds instances: a new instance state and the values put in
    its `__dict__`, without the constructor's attribute events (several calls per column, most
    of the CPU of a poll's reads). Reads and `set_committed_value` behave as on any instance.
    """
    names = _column_names(cls)
    instance: _Row = manager_of_class(cls).new_instance()
    instance.__dict__.update(zip(names, values[start : start + len(names)], strict=True))
    return instance


@functools.cache
def _column_names(cls: type[Base]) -> tuple[str, ...]:
    # The ORM configures mappers on a class's first construction or query; an instance built
    # by new_instance() needs them configured already.
    configure_mappers()
    return tuple(cls.__table__.c.keys())


PROCESSING_CHALLENGE_OF_AUTHORIZATION = (
    select(ChallengeRow.id)
    .where(
        ChallengeRow.authorization_id == bindparam("authorization_id"),
        ChallengeRow.status == "processing",
    )
    .limit(1)
)
_OTHER_CHALLENGES = _CHALLENGES.alias("other_challenges")
# pending -> processing, unless another challenge of the authorization is being validated (one
# valid challenge is enough, RFC 8555 §7.1.4): one statement checks and moves it.
START_PROCESSING_CHALLENGE = (
    update(_CHALLENGES)
    .where(
        _CHALLENGES.c.id == bindparam("challenge_id"),
        _CHALLENGES.c.status == "pending",
        ~exists().where(
            _OTHER_CHALLENGES.c.authorization_id == bindparam("of_authorization"),
            _OTHER_CHALLENGES.c.status == "processing",
        ),
    )
    .values(status="processing")
)
AUTHORIZATION_IDS_OF_ORDER = (
    select(AuthorizationRow.public_id)
    .join(OrderAuthorizationRow, OrderAuthorizationRow.authorization_id == AuthorizationRow.id)
    .where(OrderAuthorizationRow.order_id == bindparam("order_id"))
    .order_by(AuthorizationRow.id)
)
REUSABLE_AUTHORIZATIONS = (
    select(_AUTHORIZATIONS)
    .where(
        AuthorizationRow.account_id == bindparam("account_id"),
        AuthorizationRow.identifier_type == bindparam("identifier_type"),
        AuthorizationRow.identifier_value == bindparam("identifier_value"),
        AuthorizationRow.wildcard == bindparam("wildcard"),
        # Equalities, not IN: a fixed SQL text (ca.storage.bulk runs no expanding parameters).
        or_(AuthorizationRow.status == "valid", AuthorizationRow.status == "pending"),
        AuthorizationRow.expires_at > bindparam("expires_after"),
    )
    .order_by(AuthorizationRow.id.desc())
    .limit(5)
)
_OPEN_ORDER_STATUSES = ("pending", "ready")
# Orders still open that use one authorization, locked in id order (see orders.refresh_orders).
OPEN_ORDERS_USING_AUTHORIZATION_FOR_UPDATE = (
    select(OrderRow.id)
    .where(
        OrderRow.id.in_(
            select(OrderAuthorizationRow.order_id).where(
                OrderAuthorizationRow.authorization_id == bindparam("authorization_id")
            )
        ),
        or_(*(OrderRow.status == status for status in _OPEN_ORDER_STATUSES)),
    )
    .order_by(OrderRow.id)
    .with_for_update()
)
# What an order's status follows from: each open order's id and error, one row per authorization.
_ORDERS_WITH_AUTHORIZATION_STATUSES = (
    select(
        _ORDERS.c.id,
        _ORDERS.c.error,
        _AUTHORIZATIONS.c.status,
        _AUTHORIZATIONS.c.expires_at,
    )
    .join(_ORDER_AUTHORIZATIONS, _ORDER_AUTHORIZATIONS.c.order_id == _ORDERS.c.id)
    .join(_AUTHORIZATIONS, _AUTHORIZATIONS.c.id == _ORDER_AUTHORIZATIONS.c.authorization_id)
    .where(or_(*(_ORDERS.c.status == status for status in _OPEN_ORDER_STATUSES)))
)
OPEN_ORDERS_WITH_AUTHORIZATION_STATUSES = _ORDERS_WITH_AUTHORIZATION_STATUSES.where(
    _ORDERS.c.id.in_(bindparam("order_ids", expanding=True))
)
# The same for one order (most authorizations serve one): a fixed text, run below SQLAlchemy.
OPEN_ORDER_WITH_AUTHORIZATION_STATUSES = _ORDERS_WITH_AUTHORIZATION_STATUSES.where(
    _ORDERS.c.id == bindparam("order_id")
)
# (update() reserves bind names equal to column names, hence the prefixed names below.)
SET_ORDER_STATUS = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("order_id"))
    .values(status=bindparam("new_status"), error=bindparam("new_error"))
)
BEGIN_FINALIZE = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("order_id"), _ORDERS.c.status == "ready")
    .values(status="processing")
)
ORDER_ISSUED = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("order_id"))
    .values(status="valid", certificate_id=bindparam("issued_certificate_id"))
)
# processing -> valid; returns the authorization id, or no row if the challenge is not (or no
# longer) processing. The UPDATE locks the row as SELECT ... FOR UPDATE would.
CHALLENGE_VALID = (
    update(_CHALLENGES)
    .where(_CHALLENGES.c.id == bindparam("challenge_id"), _CHALLENGES.c.status == "processing")
    .values(status="valid", validated_at=bindparam("at"))
    .returning(_CHALLENGES.c.authorization_id)
)
AUTHORIZATION_VALID = (
    update(_AUTHORIZATIONS)
    .where(
        _AUTHORIZATIONS.c.id == bindparam("authorization_id"), _AUTHORIZATIONS.c.status == "pending"
    )
    .values(status="valid", validated_at=bindparam("at"), expires_at=bindparam("valid_until"))
)


MIGRATIONS = MigrationSet(
    Path(__file__).parent / "migrations", Base.metadata, "privca_acme_version"
)
