"""ACME accounts (RFC 8555 §7.3): creation (with onlyReturnExisting and External Account
Binding), contact updates, deactivation and key rollover (keyChange)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from acme_server import eab, ratelimits
from acme_server.context import ACMEContext
from acme_server.jws import AccountKey, check_algorithm, load_jwk, parse_jws
from acme_server.orders import new_id
from acme_server.problems import ACMEProblem
from acme_server.storage import AccountRow, AuthorizationRow

# RFC 5321 mailbox, dot-atom local part (no quoted strings) and a host name with a dot.
_MAILBOX = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)


def parse_contacts(acme: ACMEContext, value: Any) -> list[str]:
    """mailto: URIs only, one address each, no header fields (RFC 8555 §7.3)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ACMEProblem("malformed", "contact must be an array of URIs")
    if len(value) > acme.settings.max_contacts:
        raise ACMEProblem(
            "invalidContact", f"at most {acme.settings.max_contacts} contacts are allowed"
        )
    result = []
    for uri in value:
        scheme, sep, address = uri.partition(":")
        if not sep or scheme.lower() != "mailto":
            raise ACMEProblem(
                "unsupportedContact", f"only mailto: contacts are supported: {uri[:80]}"
            )
        if "?" in address or "," in address or "%" in address:
            raise ACMEProblem("invalidContact", f"a contact must be one plain address: {uri[:80]}")
        if len(address) > 254 or not _MAILBOX.fullmatch(address):
            raise ACMEProblem("invalidContact", f"not a valid email address: {address[:80]}")
        result.append(f"mailto:{address}")
    return result


def find_by_key(session: Session, directory: str, thumbprint: str) -> AccountRow | None:
    return session.scalars(
        select(AccountRow).where(
            AccountRow.directory == directory, AccountRow.key_thumbprint == thumbprint
        )
    ).first()


def new_account(
    acme: ACMEContext,
    session: Session,
    directory: str,
    key: AccountKey,
    payload: dict[str, Any],
    url: str,
    remote: str | None,
    now: datetime,
) -> tuple[AccountRow, bool]:
    """The account for this key, created if needed; returns (account, created)."""
    existing = find_by_key(session, directory, key.thumbprint)
    if existing is not None:
        if existing.status != "valid":
            raise ACMEProblem("unauthorized", f"the account is {existing.status}")
        return existing, False
    if payload.get("onlyReturnExisting") is True:
        raise ACMEProblem("accountDoesNotExist", "no account exists for this key")
    settings = acme.settings
    agreed = payload.get("termsOfServiceAgreed")
    if agreed is not None and not isinstance(agreed, bool):
        raise ACMEProblem("malformed", "termsOfServiceAgreed must be a boolean")
    if settings.terms_of_service and agreed is not True:
        raise ACMEProblem(
            "userActionRequired",
            "you must agree to the terms of service",
            headers={"Link": f'<{settings.terms_of_service}>;rel="terms-of-service"'},
        )
    contacts = parse_contacts(acme, payload.get("contact"))
    binding = payload.get("externalAccountBinding")
    key_row = None
    if binding is not None:
        key_row = eab.verify_binding(session, acme.core.database, binding, key, url, directory, now)
    elif acme.directory(directory).eab_required:
        raise ACMEProblem(
            "externalAccountRequired", "this directory requires an external account binding"
        )
    if remote:
        ratelimits.check(
            session,
            settings.rate_limits,
            acme.core.metrics,
            "new_accounts_per_ip",
            remote,
            now,
        )
    account = AccountRow(
        public_id=new_id(),
        directory=directory,
        key_thumbprint=key.thumbprint,
        jwk=key.canonical_json(),
        status="valid",
        contact=json.dumps(contacts),
        terms_agreed=bool(agreed),
        eab_key_id=key_row.key_id if key_row else None,
        owner=key_row.owner if key_row else None,
        created_at=now,
        created_ip=remote,
    )
    session.add(account)
    session.flush()
    if key_row is not None:
        key_row.account_id = account.id
        key_row.bound_at = now
        acme.core.audit(
            session,
            actor=f"acme-account:{acme.account_url(account)}",
            channel="acme",
            action="acme_eab_key_bound",
            object=f"acme-eab:{key_row.key_id}",
            details={"owner": key_row.owner, "account": acme.account_url(account)},
        )
    if remote:
        ratelimits.record(session, acme.settings.rate_limits, "new_accounts_per_ip", [remote], now)
    return account, True


def update_account(
    acme: ACMEContext, session: Session, account: AccountRow, payload: dict[str, Any], now: datetime
) -> None:
    """Contact changes and deactivation (RFC 8555 §7.3.2, §7.3.6)."""
    status = payload.get("status")
    if status is not None and status != "deactivated":
        raise ACMEProblem("malformed", 'the only status a client may set is "deactivated"')
    if "contact" in payload:
        account.contact = json.dumps(parse_contacts(acme, payload["contact"]))
    if payload.get("termsOfServiceAgreed") is True:
        account.terms_agreed = True
    if status == "deactivated":
        account.status = "deactivated"
        # RFC 8555 §7.3.6: pending authorizations of a deactivated account are cancelled.
        session.execute(
            update(AuthorizationRow)
            .where(AuthorizationRow.account_id == account.id, AuthorizationRow.status == "pending")
            .values(status="deactivated")
        )
        acme.core.audit(
            session,
            actor=f"acme-account:{acme.account_url(account)}",
            channel="acme",
            action="acme_account_deactivated",
            object=f"acme-account:{account.public_id}",
            details={"directory": account.directory},
        )


def key_change(
    acme: ACMEContext,
    session: Session,
    account: AccountRow,
    inner_document: Any,
    url: str,
    now: datetime,
) -> None:
    """RFC 8555 §7.3.5: the inner JWS, signed by the new key, names the account and old key."""
    inner = parse_jws(inner_document if isinstance(inner_document, dict) else b"")
    check_algorithm(inner.protected)
    if "jwk" not in inner.protected or "kid" in inner.protected:
        raise ACMEProblem("malformed", "the inner JWS must carry the new key as jwk (and no kid)")
    if "nonce" in inner.protected:
        raise ACMEProblem("malformed", "the inner JWS must not carry a nonce")
    if inner.protected.get("url") != url:
        raise ACMEProblem("malformed", "the inner JWS url must equal the outer url")
    new_key = load_jwk(inner.protected["jwk"])
    from acme_server.jws import verify_signature

    verify_signature(inner, new_key)
    payload = inner.payload_json()
    if payload.get("account") != acme.account_url(account):
        raise ACMEProblem("malformed", "the inner payload must name this account")
    try:
        old_key = load_jwk(payload.get("oldKey"))
    except ACMEProblem:
        raise ACMEProblem("malformed", "oldKey must be the account's current JWK") from None
    if old_key.thumbprint != account.key_thumbprint:
        raise ACMEProblem("unauthorized", "oldKey is not the account's current key")
    if new_key.thumbprint == account.key_thumbprint:
        raise ACMEProblem("malformed", "the new key is the current key")
    other = find_by_key(session, account.directory, new_key.thumbprint)
    if other is not None:
        raise ACMEProblem(
            "malformed",
            "the new key already belongs to another account",
            status=409,
            headers={"Location": acme.account_url(other)},
        )
    account.key_thumbprint = new_key.thumbprint
    account.jwk = new_key.canonical_json()
    acme.core.audit(
        session,
        actor=f"acme-account:{acme.account_url(account)}",
        channel="acme",
        action="acme_account_key_changed",
        object=f"acme-account:{account.public_id}",
        details={"old_thumbprint": old_key.thumbprint, "new_thumbprint": new_key.thumbprint},
    )
