"""External Account Binding (RFC 8555 §7.3.4): MAC keys an operator hands out, each binding one
ACME account to an owner that is then recorded on every certificate the account gets.

Keys are created and revoked with `privca acme eab …` or the admin API; the MAC key is shown
once at creation and kept in the database (the server must check MACs with it), never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from acme_server.jws import AccountKey, b64encode, load_jwk, parse_jws
from acme_server.problems import ACMEProblem
from acme_server.storage import EABKeyRow
from ca.errors import BadRequest, NotFound

if TYPE_CHECKING:
    from ca.core import CACore

MAC_ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    hmac_key: str  # base64url, shown once
    owner: str
    directory: str | None


def describe(row: EABKeyRow) -> dict[str, Any]:
    """A key's public description (never the MAC key)."""
    return {
        "key_id": row.key_id,
        "owner": row.owner,
        "directory": row.directory,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "bound": row.account_id is not None,
        "bound_at": row.bound_at.isoformat() if row.bound_at else None,
        "status": "revoked" if row.revoked_at else ("bound" if row.account_id else "unused"),
    }


def _new_mac_key() -> bytes:
    """32 random bytes whose base64url text does not start with "-": command-line parsers
    (certbot's argparse among them) take `--eab-hmac-key -abc…` for an unknown option, which
    would break one key in 64. Drawing again costs the key a fraction of one bit."""
    while True:
        key = os.urandom(32)
        if key[0] >> 2 != 62:  # 62 is "-" in the base64url alphabet
            return key


def create_key(
    core: CACore, *, owner: str, directory: str | None, actor: str, channel: str
) -> CreatedKey:
    """A new key for `owner`, usable in `directory` (None: any directory); audited."""
    owner = owner.strip()
    if not owner or len(owner) > 256:
        raise BadRequest("owner must be 1 to 256 characters")
    key_id = "eab-" + secrets.token_urlsafe(12)
    mac_key = _new_mac_key()
    with core.database.write() as session:
        session.add(
            EABKeyRow(
                key_id=key_id,
                hmac_key=mac_key,
                owner=owner,
                directory=directory,
                created_at=core.now(),
                created_by=actor,
            )
        )
        core.audit(
            session,
            actor=actor,
            channel=channel,
            action="acme_eab_key_created",
            object=f"acme-eab:{key_id}",
            details={"owner": owner, "directory": directory},
        )
    return CreatedKey(key_id, b64encode(mac_key), owner, directory)


def list_keys(core: CACore) -> list[dict[str, Any]]:
    with core.database.read() as session:
        return [describe(row) for row in session.scalars(select(EABKeyRow).order_by(EABKeyRow.id))]


def revoke_key(core: CACore, key_id: str, *, actor: str, channel: str) -> dict[str, Any]:
    """Refuse the key for new bindings from now on (accounts already bound keep working)."""
    with core.database.write() as session:
        row = session.scalars(
            core.database.for_update(select(EABKeyRow).where(EABKeyRow.key_id == key_id))
        ).first()
        if row is None:
            raise NotFound(f'no EAB key "{key_id}"')
        if row.revoked_at is None:
            row.revoked_at = core.now()
            core.audit(
                session,
                actor=actor,
                channel=channel,
                action="acme_eab_key_revoked",
                object=f"acme-eab:{key_id}",
                details={"owner": row.owner},
            )
        return describe(row)


def verify_binding(
    session: Session,
    database: Any,
    binding: Any,
    account_key: AccountKey,
    url: str,
    directory: str,
    now: datetime,
) -> EABKeyRow:
    """Check an externalAccountBinding JWS and lock its key row; raises ACMEProblem.

    RFC 8555 §7.3.4: MAC algorithm, `kid` naming the key, the newAccount URL, no nonce, and the
    account's own JWK as payload.
    """
    if not isinstance(binding, dict):
        raise ACMEProblem("malformed", "externalAccountBinding must be a JWS object")
    jws = parse_jws(binding)
    alg = jws.protected.get("alg")
    if alg not in MAC_ALGORITHMS:
        raise ACMEProblem(
            "badSignatureAlgorithm",
            "externalAccountBinding must use HS256, HS384 or HS512",
            extra={"algorithms": list(MAC_ALGORITHMS)},
        )
    if "nonce" in jws.protected:
        raise ACMEProblem("malformed", "externalAccountBinding must not carry a nonce")
    if jws.protected.get("url") != url:
        raise ACMEProblem("unauthorized", "externalAccountBinding url must be the newAccount URL")
    kid = jws.protected.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ACMEProblem("malformed", "externalAccountBinding must name its key in kid")
    try:
        bound_key = load_jwk(json.loads(jws.payload()))
    except (ValueError, UnicodeDecodeError):
        raise ACMEProblem("malformed", "externalAccountBinding payload must be a JWK") from None
    if bound_key.thumbprint != account_key.thumbprint:
        raise ACMEProblem("unauthorized", "externalAccountBinding binds a different key")
    row = session.scalars(
        database.for_update(select(EABKeyRow).where(EABKeyRow.key_id == kid))
    ).first()
    mac = hmac.new(row.hmac_key if row else b"\0" * 32, jws.signing_input, MAC_ALGORITHMS[alg])
    if row is None or not hmac.compare_digest(mac.digest(), jws.signature):
        raise ACMEProblem("unauthorized", "externalAccountBinding does not verify")
    if row.revoked_at is not None:
        raise ACMEProblem("unauthorized", "the external account key has been revoked")
    if row.account_id is not None:
        raise ACMEProblem("unauthorized", "the external account key is already bound")
    if row.directory is not None and row.directory != directory:
        raise ACMEProblem("unauthorized", "the external account key is for another directory")
    return row
