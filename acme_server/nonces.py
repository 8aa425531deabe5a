"""Replay nonces (RFC 8555 §6.5): minted without a write, spent exactly once in the database.

A nonce is base64url(issue time ‖ 16 random bytes ‖ HMAC-SHA256 truncated to 16 bytes) under a
MAC key kept in the database (`acme_secrets`), so every worker and node mints and recognises the
same nonces. Spending one inserts it into `acme_used_nonces`, whose primary key makes a second
use fail on every engine, across processes. Used rows are purged once the nonce would have
expired anyway. Minting costs no database write: every response carries a fresh nonce.
Spending, which every request does, runs below SQLAlchemy's execution machinery on PostgreSQL
(ca.storage.bulk.execute_statement).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from acme_server.jws import b64decode, b64encode
from acme_server.problems import ACMEProblem
from acme_server.storage import SPEND_NONCE_FOR_ACCOUNT, SecretRow, UsedNonceRow
from ca.storage import Database
from ca.storage.bulk import execute_statement

_SECRET_NAME = "nonce-mac-key"  # noqa: S105 - a row name, not a secret
_MAC_BYTES = 16
_RANDOM_BYTES = 16
_LENGTH = 8 + _RANDOM_BYTES + _MAC_BYTES
_SPEND = insert(UsedNonceRow.__table__)  # Core insert: no ORM bookkeeping needed


class NonceService:
    """Mints and spends nonces; the MAC key is read (or created) on first use in this process."""

    def __init__(self, database: Database, lifetime: int) -> None:
        self.database = database
        self.lifetime = lifetime
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _mac_key(self, now: datetime) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = _load_or_create_key(self.database, now)
        return self._key

    def mint(self, now: datetime) -> str:
        body = struct.pack(">Q", int(now.timestamp())) + os.urandom(_RANDOM_BYTES)
        mac = hmac.new(self._mac_key(now), body, hashlib.sha256).digest()[:_MAC_BYTES]
        return b64encode(body + mac)

    def check(self, nonce: object, now: datetime) -> datetime:
        """Whether this server minted `nonce` and it is fresh; returns when it expires.

        Raises badNonce. Does not spend it (see `spend`).
        """
        if not isinstance(nonce, str) or not 40 <= len(nonce) <= 64:
            raise ACMEProblem("badNonce", "the JWS has no valid nonce")
        try:
            raw = b64decode(nonce, "nonce")
        except ACMEProblem:
            raise ACMEProblem("badNonce", "the nonce is not base64url") from None
        if len(raw) != _LENGTH:
            raise ACMEProblem("badNonce", "the nonce was not issued by this server")
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        expected = hmac.new(self._mac_key(now), body, hashlib.sha256).digest()[:_MAC_BYTES]
        if not hmac.compare_digest(mac, expected):
            raise ACMEProblem("badNonce", "the nonce was not issued by this server")
        issued = struct.unpack(">Q", body[:8])[0]
        expires = datetime.fromtimestamp(issued + self.lifetime, tz=now.tzinfo)
        if expires <= now:
            raise ACMEProblem("badNonce", "the nonce has expired")
        return expires

    def spend(self, session: Session, nonce: str, expires: datetime) -> None:
        """Record the nonce as used; raises badNonce if it was used before. A duplicate aborts the
        caller's transaction (PostgreSQL), so spend before writing anything else in it."""
        try:
            execute_statement(session.connection(), _SPEND, {"nonce": nonce, "expires_at": expires})
        except IntegrityError:
            raise ACMEProblem("badNonce", "the nonce has already been used") from None

    def spend_for_account(
        self, session: Session, nonce: str, expires: datetime, account_id: int, thumbprint: str
    ) -> bool:
        """`spend`, but only while the account is valid and holds the key with `thumbprint`:
        False (nothing written) if it is not. Raises badNonce as `spend` does."""
        try:
            result = execute_statement(
                session.connection(),
                SPEND_NONCE_FOR_ACCOUNT,
                {
                    "spent_nonce": nonce,
                    "spent_until": expires,
                    "account_id": account_id,
                    "thumbprint": thumbprint,
                },
            )
        except IntegrityError:
            raise ACMEProblem("badNonce", "the nonce has already been used") from None
        return result.rowcount == 1


def _load_or_create_key(database: Database, now: datetime) -> bytes:
    with database.write() as session:
        row = session.get(SecretRow, _SECRET_NAME)
        if row is not None:
            return row.value
        try:
            with session.begin_nested():
                session.add(SecretRow(name=_SECRET_NAME, value=os.urandom(32), created_at=now))
        except IntegrityError:
            pass  # another worker created it first
    with database.read() as session:
        value = session.scalar(select(SecretRow.value).where(SecretRow.name == _SECRET_NAME))
        assert value is not None
        return value


def purge_used(session: Session, now: datetime) -> int:
    result = session.execute(delete(UsedNonceRow).where(UsedNonceRow.expires_at < now))
    return result.rowcount or 0  # type: ignore[attr-defined]
