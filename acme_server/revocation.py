"""revokeCert (RFC 8555 §7.6): who may revoke, then ca.revocation.revoke() does it.

Allowed: the account that ordered the certificate, an account holding valid authorizations for
every identifier in it, or anyone signing with the certificate's own key (jwk). The check runs
in the request's ACME transaction; the revocation itself is the core's own transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from acme_server.context import ACMEContext
from acme_server.jws import AccountKey, b64decode
from acme_server.problems import ACMEProblem, from_core_error
from acme_server.storage import AccountRow, AuthorizationRow, OrderRow
from ca import revocation
from ca.errors import AlreadyRevoked, CoreError
from ca.issuers import public_key_sha256
from ca.storage import certificates as certificate_store

# RFC 5280 reasons a subscriber may give; CA-side reasons (cACompromise, aACompromise) are not.
SUBSCRIBER_REASONS = (0, 1, 3, 4, 5, 9)


@dataclass(frozen=True)
class RevocationTarget:
    serial: str
    issuer_name: str
    reason: int
    actor: str


def authorize_revocation(
    acme: ACMEContext,
    session: Session,
    payload: dict[str, Any],
    account: AccountRow | None,
    key: AccountKey,
    now: datetime,
) -> RevocationTarget:
    der = b64decode(payload.get("certificate"), "certificate")
    reason = payload.get("reason", 0)
    if isinstance(reason, bool) or not isinstance(reason, int) or reason not in SUBSCRIBER_REASONS:
        raise ACMEProblem(
            "badRevocationReason",
            f"reason must be one of {', '.join(str(r) for r in SUBSCRIBER_REASONS)}",
        )
    row = certificate_store.find_by_fingerprint(session, hashlib.sha256(der).hexdigest())
    if row is None:
        raise ACMEProblem("malformed", "this server did not issue that certificate", status=404)
    if row.status == "revoked":
        raise ACMEProblem("alreadyRevoked", "the certificate is already revoked")
    issuer = acme.core.issuer_by_id(row.issuer_id)
    if issuer is None:
        raise ACMEProblem("malformed", "this server did not issue that certificate", status=404)
    if account is None:
        if public_key_sha256(key.key) != row.public_key_sha256:
            raise ACMEProblem("unauthorized", "the JWS key is not the certificate's key")
        actor = "acme-certificate-key"
    else:
        if not _account_may_revoke(session, account, row.id, json.loads(row.sans), now):
            raise ACMEProblem(
                "unauthorized",
                "this account neither ordered the certificate nor holds "
                "valid authorizations for all its names",
            )
        actor = f"acme-account:{acme.account_url(account)}"
    return RevocationTarget(row.serial, issuer.name, reason, actor)


def _account_may_revoke(
    session: Session, account: AccountRow, certificate_id: int, sans: list[str], now: datetime
) -> bool:
    ordered = session.scalars(
        select(OrderRow.id).where(
            OrderRow.certificate_id == certificate_id, OrderRow.account_id == account.id
        )
    ).first()
    if ordered is not None:
        return True
    if not sans:
        return False
    for san in sans:
        kind, _, value = san.partition(":")
        wildcard = kind == "dns" and value.startswith("*.")
        found = session.scalars(
            select(AuthorizationRow.id).where(
                AuthorizationRow.account_id == account.id,
                AuthorizationRow.identifier_type == kind,
                AuthorizationRow.identifier_value == (value[2:] if wildcard else value),
                AuthorizationRow.wildcard == wildcard,
                AuthorizationRow.status == "valid",
                AuthorizationRow.expires_at > now,
            )
        ).first()
        if found is None:
            return False
    return True


def revoke(target: RevocationTarget, acme: ACMEContext) -> None:
    try:
        revocation.revoke(
            acme.core,
            target.serial,
            issuer_name=target.issuer_name,
            reason=target.reason,
            actor=target.actor,
            channel="acme",
        )
    except AlreadyRevoked:
        raise ACMEProblem("alreadyRevoked", "the certificate is already revoked") from None
    except CoreError as exc:
        raise from_core_error(exc) from None
