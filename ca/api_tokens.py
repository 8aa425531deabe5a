"""Admin API bearer tokens: 256 random bits, shown once, stored as SHA-256, with scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ca.errors import BadRequest, Forbidden, NotFound, Unauthorized
from ca.storage import Database
from ca.storage.models import APITokenRow

MAX_TOKEN_ID = 2**31 - 1  # api_tokens.id is a 32-bit INTEGER on PostgreSQL
SCOPES = ("read", "issue", "revoke", "admin")
TOKEN_PREFIX = "pca_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    scopes: frozenset[str]
    created_at: datetime
    revoked: bool
    last_used_at: datetime | None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(text: str | list[str]) -> frozenset[str]:
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    if not all(isinstance(item, str) for item in items):
        raise BadRequest(f"scopes must be names, some of {', '.join(SCOPES)}")
    unknown = [s for s in items if s not in SCOPES]
    if not items or unknown:
        raise BadRequest(
            f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(items) or 'none'}"
        )
    return frozenset(items)


def create_token(
    session: Session, name: str, scopes: frozenset[str], now: datetime
) -> tuple[str, TokenInfo]:
    """A new token (returned once, never stored) and its record."""
    if not name or len(name) > 128:
        raise BadRequest("token name must be 1 to 128 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = APITokenRow(
        name=name,
        token_sha256=_digest(token),
        scopes=" ".join(sorted(scopes)),
        created_at=now,
        revoked=False,
    )
    session.add(row)
    session.flush()
    return token, _info(row)


def authenticate(session: Session, token: str | None, scope: str, now: datetime) -> TokenInfo:
    """The token's record if it is valid and holds `scope`; Unauthorized or Forbidden otherwise."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise Unauthorized("a valid bearer token is required")
    row = session.scalars(
        select(APITokenRow).where(APITokenRow.token_sha256 == _digest(token))
    ).first()
    # The lookup is by a hash of a 256-bit secret, so timing reveals nothing useful; compare anyway.
    if row is None or row.revoked or not hmac.compare_digest(row.token_sha256, _digest(token)):
        raise Unauthorized("a valid bearer token is required")
    info = _info(row)
    if not info.allows(scope):
        raise Forbidden(f'this token lacks the "{scope}" scope')
    return info


# last_used_at is for operators ("is this token still used?"), so minute precision is enough:
# writing it on every request would make every admin GET a write transaction.
LAST_USED_PRECISION = timedelta(minutes=1)


def record_use(database: Database, info: TokenInfo, now: datetime) -> None:
    """Note that the token was used, at most once a minute, in a transaction of its own."""
    if info.last_used_at is not None and now - info.last_used_at < LAST_USED_PRECISION:
        return
    with database.write() as session:
        session.execute(
            update(APITokenRow).where(APITokenRow.id == info.id).values(last_used_at=now)
        )


def list_tokens(session: Session) -> list[TokenInfo]:
    return [_info(row) for row in session.scalars(select(APITokenRow).order_by(APITokenRow.id))]


def revoke_token(session: Session, token_id: int) -> TokenInfo:
    # An id beyond the column's range would be the database's error, not "no such token".
    row = session.get(APITokenRow, token_id) if 0 < token_id <= MAX_TOKEN_ID else None
    if row is None:
        raise NotFound(f"no token with id {token_id}")
    row.revoked = True
    return _info(row)


def _info(row: APITokenRow) -> TokenInfo:
    return TokenInfo(
        row.id,
        row.name,
        frozenset(row.scopes.split()),
        row.created_at,
        row.revoked,
        row.last_used_at,
    )
