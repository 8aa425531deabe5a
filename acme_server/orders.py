"""Orders, authorizations and challenges (RFC 8555 §7.4, §7.5, §7.1.6), and finalize.

Status moves: an order is pending while any authorization is pending, ready when all are valid,
invalid as soon as one is invalid, deactivated or expired, processing while the core issues, and
valid with a certificate. Finalize builds one IssuanceRequest and calls core.issue() outside any
ACME transaction (the core commits its own), so the only writes here are ACME rows.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from acme_server import ari, ratelimits
from acme_server.context import ACMEContext, authorization_status, order_status, rfc3339
from acme_server.jws import AccountKey, b64decode
from acme_server.problems import ACMEProblem, from_core_error
from acme_server.storage import (
    AUTHORIZATION_IDS_OF_ORDER,
    BEGIN_FINALIZE,
    OPEN_ORDER_WITH_AUTHORIZATION_STATUSES,
    OPEN_ORDERS_USING_AUTHORIZATION_FOR_UPDATE,
    OPEN_ORDERS_WITH_AUTHORIZATION_STATUSES,
    ORDER_ISSUED,
    PROCESSING_CHALLENGE_OF_AUTHORIZATION,
    REUSABLE_AUTHORIZATIONS,
    SET_ORDER_STATUS,
    START_PROCESSING_CHALLENGE,
    AccountRow,
    AuthorizationRow,
    ChallengeRow,
    OrderAuthorizationRow,
    OrderRow,
    row_object,
)
from ca import policy
from ca.csr import common_name, parse_csr
from ca.errors import CoreError, Unavailable
from ca.issuance_request import Identifier, IssuanceRequest
from ca.jobs import Job, enqueue, enqueue_leased
from ca.storage.bulk import execute_statement, fetch_rows, insert_many

log = logging.getLogger("privca.acme")

VALIDATE_JOB = "acme_validate"
_PRECHECK_KEY: list[Any] = []
_ORDERS = OrderRow.__table__
_AUTHORIZATIONS = AuthorizationRow.__table__
_ORDER_AUTHORIZATIONS = OrderAuthorizationRow.__table__
_CHALLENGES = ChallengeRow.__table__


def new_id() -> str:
    return secrets.token_urlsafe(16)


def owner_of(acme: ACMEContext, account: AccountRow) -> str:
    """The owner recorded on certificates: the EAB owner if bound, else the account itself."""
    return account.owner or f"acme-account:{acme.account_url(account)}"


# --- identifiers -----------------------------------------------------------------------------


def parse_identifiers(acme: ACMEContext, value: Any) -> list[Identifier]:
    """Normalised, de-duplicated order identifiers; raises malformed/unsupportedIdentifier."""
    if not isinstance(value, list) or not value:
        raise ACMEProblem("malformed", "identifiers must be a non-empty array")
    if len(value) > acme.settings.max_identifiers:
        raise ACMEProblem(
            "rejectedIdentifier",
            f"an order may name at most {acme.settings.max_identifiers} identifiers",
        )
    result: dict[tuple[str, str], Identifier] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            raise ACMEProblem("malformed", "each identifier needs a type and a string value")
        kind, text = item.get("type"), item["value"].strip()
        if kind == "dns":
            name = text.lower().rstrip(".")
            if not name or not name.isascii():
                raise ACMEProblem(
                    "rejectedIdentifier", f'"{text[:80]}" is not an ASCII (A-label) DNS name'
                )
            identifier = Identifier("dns", name)
        elif kind == "ip":
            try:
                identifier = Identifier("ip", str(ipaddress.ip_address(text)))
            except ValueError:
                raise ACMEProblem("malformed", f'"{text[:80]}" is not an IP address') from None
        else:
            raise ACMEProblem(
                "unsupportedIdentifier", f"identifier type {kind!r} is not supported (dns, ip)"
            )
        result[(identifier.type, identifier.value)] = identifier
    return list(result.values())


def _precheck_key() -> Any:
    if not _PRECHECK_KEY:
        _PRECHECK_KEY.append(ec.generate_private_key(ec.SECP256R1()).public_key())
    return _PRECHECK_KEY[0]


def precheck_identifiers(
    acme: ACMEContext, profile_name: str, identifiers: list[Identifier]
) -> None:
    """Refuse at newOrder what the policy engine would refuse at finalize, per identifier."""
    profile = acme.core.profiles[profile_name]
    subproblems: list[dict[str, Any]] = []
    for identifier in identifiers:
        if identifier.type not in profile.san_types:
            subproblems.append(
                _subproblem(identifier, f"profile {profile.name} does not allow {identifier.type}")
            )
    request = IssuanceRequest(
        channel="acme",
        requester="acme",
        profile=profile.name,
        public_key=_precheck_key(),
        identifiers=tuple(i for i in identifiers if i.type in profile.san_types),
    )
    violations = policy.evaluate(
        profile.policy, profile, request, validity_seconds=profile.validity_days * 86400
    )
    for violation in violations:
        if violation.identifier and ":" in violation.identifier:
            kind, _, value = violation.identifier.partition(":")
            subproblems.append(_subproblem(Identifier(kind, value), violation.detail))
    if subproblems:
        detail = "; ".join(f"{s['identifier']['value']}: {s['detail']}" for s in subproblems[:5])
        raise ACMEProblem(
            "rejectedIdentifier", f"policy refuses this order: {detail}", subproblems=subproblems
        )


def _subproblem(identifier: Identifier, detail: str) -> dict[str, Any]:
    return {
        "type": "urn:ietf:params:acme:error:rejectedIdentifier",
        "detail": detail,
        "status": 400,
        "identifier": {"type": identifier.type, "value": identifier.value},
    }


def _parse_time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ACMEProblem("malformed", f"{name} must be an RFC 3339 date-time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ACMEProblem("malformed", f"{name} must be an RFC 3339 date-time") from None
    if parsed.tzinfo is None:
        raise ACMEProblem("malformed", f"{name} must carry a time zone")
    return parsed


# --- newOrder --------------------------------------------------------------------------------


def new_order(
    acme: ACMEContext,
    session: Session,
    account: AccountRow,
    payload: dict[str, Any],
    now: datetime,
) -> tuple[OrderRow, list[AuthorizationRow]]:
    """Create the order (reusing authorizations where allowed); returns it and its
    authorizations in order_json's order."""
    settings = acme.settings
    directory = acme.directory(account.directory)
    identifiers = parse_identifiers(acme, payload.get("identifiers"))
    profile = payload.get("profile") or directory.default_profile
    if not isinstance(profile, str) or profile not in directory.profiles:
        raise ACMEProblem(
            "invalidProfile",
            f"unknown profile {profile!r}; this directory offers {', '.join(directory.profiles)}",
        )
    not_before = _parse_time(payload.get("notBefore"), "notBefore")
    not_after = _parse_time(payload.get("notAfter"), "notAfter")
    if (not_before or not_after) and not settings.allow_validity_request:
        raise ACMEProblem("malformed", "this server does not accept notBefore or notAfter")
    if not_before and not_after and not_after <= not_before:
        raise ACMEProblem("malformed", "notAfter must be after notBefore")
    if not_after and not_after <= now:
        raise ACMEProblem("malformed", "notAfter must be in the future")
    replaces = payload.get("replaces")
    if replaces is not None:
        ari.check_replaces(acme, session, account, replaces)
    precheck_identifiers(acme, profile, identifiers)

    limits = settings.rate_limits
    metrics = acme.core.metrics
    ratelimits.check(session, limits, metrics, "new_orders_per_account", account.public_id, now)
    names = sorted(
        {
            ratelimits.registered_name(i.value, settings.registered_name_labels)
            for i in identifiers
            if i.type == "dns"
        }
        | {i.value for i in identifiers if i.type == "ip"}
    )
    for name in names:
        ratelimits.check(session, limits, metrics, "certificates_per_name", name, now)
    for identifier in identifiers:
        ratelimits.check(
            session,
            limits,
            metrics,
            "failed_validations",
            f"{account.public_id}:{identifier}",
            now,
        )

    authorizations = [_authorization_for(acme, session, account, i, now) for i in identifiers]
    expires = min(
        [now + timedelta(seconds=settings.order_lifetime)] + [a.expires_at for a in authorizations]
    )
    status = "ready" if all(a.status == "valid" for a in authorizations) else "pending"
    values = {
        "public_id": new_id(),
        "account_id": account.id,
        "status": status,
        "expires_at": expires,
        "identifiers": json.dumps([{"type": i.type, "value": i.value} for i in identifiers]),
        "profile": profile,
        "not_before": not_before,
        "not_after": not_after,
        "replaces": replaces,
        "created_at": now,
    }
    # Core inserts: the unit of work costs more than the statements (see _authorization_for).
    connection = session.connection()
    (inserted,) = insert_many(connection, _ORDERS, [values], returning=("id",))
    order = OrderRow(id=inserted.id, **values)
    insert_many(
        connection,
        _ORDER_AUTHORIZATIONS,
        [{"order_id": order.id, "authorization_id": a.id} for a in authorizations],
    )
    ratelimits.record(session, limits, "new_orders_per_account", [account.public_id], now)
    return order, sorted(authorizations, key=lambda a: a.id)  # as order_authorization_urls()


def _challenge_types(acme: ACMEContext, identifier: Identifier, wildcard: bool) -> list[str]:
    allowed = acme.settings.challenge_types
    if wildcard:
        return [t for t in allowed if t == "dns-01"]  # RFC 8555 §7.1.3
    if identifier.type == "ip":
        return [t for t in allowed if t != "dns-01"]  # RFC 8738 §7
    return list(allowed)


def _authorization_for(
    acme: ACMEContext, session: Session, account: AccountRow, identifier: Identifier, now: datetime
) -> AuthorizationRow:
    wildcard = identifier.type == "dns" and identifier.value.startswith("*.")
    value = identifier.value[2:] if wildcard else identifier.value
    settings = acme.settings
    reusable = fetch_rows(
        session.connection(),
        REUSABLE_AUTHORIZATIONS,
        {
            "account_id": account.id,
            "identifier_type": identifier.type,
            "identifier_value": value,
            "wildcard": wildcard,
            "expires_after": now + timedelta(minutes=5),
        },
    )
    for row in reusable:
        authz = row_object(AuthorizationRow, row)
        if authz.status == "pending":
            return authz
        if (
            settings.authorization_reuse
            and authz.validated_at is not None
            and authz.validated_at > now - timedelta(seconds=settings.authorization_reuse)
        ):
            return authz
    types = _challenge_types(acme, identifier, wildcard)
    if not types:
        raise ACMEProblem(
            "rejectedIdentifier",
            f"no challenge type this server offers can validate {identifier.value}",
        )
    values = {
        "public_id": new_id(),
        "account_id": account.id,
        "identifier_type": identifier.type,
        "identifier_value": value,
        "wildcard": wildcard,
        "status": "pending",
        "expires_at": now + timedelta(seconds=settings.authorization_lifetime),
        "created_at": now,
    }
    # Written with Core statements (ca.storage.bulk: below SQLAlchemy on PostgreSQL, all the
    # challenges in one INSERT); the returned AuthorizationRow is a detached copy of the row
    # (the session does not track it), enough for the order and its JSON.
    connection = session.connection()
    (inserted,) = insert_many(connection, _AUTHORIZATIONS, [values], returning=("id",))
    authz = AuthorizationRow(id=inserted.id, **values)
    insert_many(
        connection,
        _CHALLENGES,
        [
            {
                "public_id": new_id(),
                "authorization_id": authz.id,
                "type": kind,
                "token": secrets.token_urlsafe(32),
                "status": "pending",
            }
            for kind in types
        ],
    )
    return authz


# --- reading ---------------------------------------------------------------------------------


def order_authorization_urls(
    acme: ACMEContext, session: Session, account: AccountRow, order: OrderRow
) -> list[str]:
    """The order's authorization URLs, in authorization id order (as new_order returns them)."""
    return [
        acme.url(account.directory, "authz", public_id)
        for public_id in session.scalars(AUTHORIZATION_IDS_OF_ORDER, {"order_id": order.id})
    ]


def order_json(
    acme: ACMEContext,
    session: Session | None,
    account: AccountRow,
    order: OrderRow,
    now: datetime,
    *,
    authorization_urls: list[str] | None = None,
) -> dict[str, Any]:
    """The order object (RFC 8555 §7.1.3); pass `authorization_urls` when already known, else
    they are read with `session`."""
    directory = account.directory
    if authorization_urls is None:
        assert session is not None
        authorization_urls = order_authorization_urls(acme, session, account, order)
    body: dict[str, Any] = {
        "status": order_status(order, now),
        "expires": rfc3339(order.expires_at),
        "identifiers": json.loads(order.identifiers),
        "authorizations": authorization_urls,
        "finalize": acme.order_url(directory, order) + "/finalize",
    }
    if order.profile:
        body["profile"] = order.profile
    if order.not_before:
        body["notBefore"] = rfc3339(order.not_before)
    if order.not_after:
        body["notAfter"] = rfc3339(order.not_after)
    if order.replaces:
        body["replaces"] = order.replaces
    if order.error:
        body["error"] = json.loads(order.error)
    if order.status == "valid" and order.certificate_id is not None:
        body["certificate"] = acme.certificate_url(directory, order)
    return body


def authorization_json(
    acme: ACMEContext,
    account: AccountRow,
    authz: AuthorizationRow,
    challenges: list[ChallengeRow],
    now: datetime,
) -> dict[str, Any]:
    """The authorization object (RFC 8555 §7.1.4) from the row and its challenges in id order."""
    status = authorization_status(authz, now)
    if status == "valid":
        # RFC 8555 §7.1.4: a valid authorization lists the challenge that validated it.
        shown = [c for c in challenges if c.status == "valid"] or list(challenges)
    else:
        shown = list(challenges)
    body: dict[str, Any] = {
        "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
        "status": status,
        "expires": rfc3339(authz.expires_at),
        "challenges": [acme.challenge_json(account.directory, c) for c in shown],
    }
    if authz.wildcard:
        body["wildcard"] = True
    return body


# The error an order gets when one of its authorizations becomes unusable.
_UNUSABLE = json.dumps(
    {
        "type": "urn:ietf:params:acme:error:unauthorized",
        "detail": "an authorization of this order is no longer usable",
        "status": 403,
    }
)


def refresh_orders(session: Session, authorization_id: int, now: datetime) -> None:
    """Move every pending/ready order using this authorization to the status its
    authorizations give it (RFC 8555 §7.1.6). Written with Core statements: OrderRow objects
    already loaded in `session` are not refreshed."""
    # Two validations of one order's authorizations may commit side by side; each, reading
    # before the other committed, would see the other's authorization still pending and leave
    # the order pending for ever. Locking the orders first (in id order, so two such
    # transactions cannot deadlock) serialises them, and the read below, a new statement, then
    # sees what the first committed. SQLite serialises writers already and renders no lock.
    connection = session.connection()
    locked = [
        order_id
        for (order_id,) in fetch_rows(
            connection,
            OPEN_ORDERS_USING_AUTHORIZATION_FOR_UPDATE,
            {"authorization_id": authorization_id},
        )
    ]
    if not locked:
        return
    # One query for the orders and all their authorizations (not one more per order).
    if len(locked) == 1:
        rows = fetch_rows(
            connection, OPEN_ORDER_WITH_AUTHORIZATION_STATUSES, {"order_id": locked[0]}
        )
    else:
        rows = connection.execute(
            OPEN_ORDERS_WITH_AUTHORIZATION_STATUSES, {"order_ids": locked}
        ).all()
    orders: dict[int, tuple[str | None, list[str]]] = {}
    for order_id, error, status, expires_at in rows:
        if status in ("pending", "valid") and expires_at <= now:
            status = "expired"  # as authorization_status()
        orders.setdefault(order_id, (error, []))[1].append(status)
    changes = []
    for order_id, (error, statuses) in orders.items():
        if any(s in ("invalid", "deactivated", "expired", "revoked") for s in statuses):
            changes.append(
                {"order_id": order_id, "new_status": "invalid", "new_error": error or _UNUSABLE}
            )
        elif all(s == "valid" for s in statuses):
            changes.append({"order_id": order_id, "new_status": "ready", "new_error": error})
    if len(changes) == 1:  # the usual case: one order per authorization
        execute_statement(connection, SET_ORDER_STATUS, changes[0])
    elif changes:
        connection.execute(SET_ORDER_STATUS, changes)


# --- authorizations and challenges -----------------------------------------------------------


def deactivate_authorization(session: Session, authz: AuthorizationRow, now: datetime) -> None:
    """RFC 8555 §7.5.2: only a pending or valid authorization can be deactivated."""
    if authorization_status(authz, now) not in ("pending", "valid"):
        raise ACMEProblem(
            "malformed", f"an authorization in status {authz.status} cannot be deactivated"
        )
    # `authz` may be a transient copy (see acme_server.web): change the row itself.
    session.connection().execute(
        update(AuthorizationRow.__table__)
        .where(AuthorizationRow.__table__.c.id == authz.id)
        .values(status="deactivated")
    )
    set_committed_value(authz, "status", "deactivated")
    refresh_orders(session, authz.id, now)


def respond_to_challenge(
    acme: ACMEContext,
    session: Session,
    account: AccountRow,
    challenge: ChallengeRow,
    authz: AuthorizationRow,
    now: datetime,
) -> Job | None:
    """The client says it is ready: move the challenge to processing and queue its validation
    job. Returns the job when this process's validator threads are to run it (the caller wakes
    one after the commit)."""
    if challenge.status != "pending":
        return None  # already processing, valid or invalid: answering again changes nothing
    status = authorization_status(authz, now)
    if status != "pending":
        raise ACMEProblem("malformed", f"the authorization is {status}, not pending")
    identifier = f"{authz.identifier_type}:{'*.' if authz.wildcard else ''}{authz.identifier_value}"
    ratelimits.check(
        session,
        acme.settings.rate_limits,
        acme.core.metrics,
        "failed_validations",
        f"{account.public_id}:{identifier}",
        now,
    )
    result = execute_statement(
        session.connection(),
        START_PROCESSING_CHALLENGE,
        {"challenge_id": challenge.id, "of_authorization": authz.id},
    )
    if result.rowcount != 1:
        others = session.scalars(
            PROCESSING_CHALLENGE_OF_AUTHORIZATION, {"authorization_id": authz.id}
        ).first()
        if others is not None and others != challenge.id:
            raise ACMEProblem(
                "malformed", "another challenge of this authorization is being validated"
            )
        return None  # a concurrent request for this challenge got there first
    # Already written by the UPDATE above: record it as loaded, not as a change to flush again.
    set_committed_value(challenge, "status", "processing")
    payload = validation_payload(challenge, authz, account)
    # No unique_key (a lookup per job): the conditional UPDATE above lets exactly one request
    # move this challenge to processing, so exactly one queues its job.
    attempts = acme.settings.validation.attempts + 1
    if acme.validation_holder is None:
        enqueue(session, VALIDATE_JOB, payload, run_at=now, max_attempts=attempts)
        return None
    # Written already leased to this process's validator threads, which start it right after
    # the commit: no claiming transaction per challenge.
    return enqueue_leased(
        session,
        VALIDATE_JOB,
        payload,
        now=now,
        holder=acme.validation_holder,
        max_attempts=attempts,
    )


def validation_payload(
    challenge: ChallengeRow, authz: AuthorizationRow, account: AccountRow
) -> dict[str, Any]:
    """The job's payload: the challenge's id plus what its first attempt needs, so that attempt
    reads nothing (the challenge was made `processing` in the transaction that queued it).
    Tokens and thumbprints are public values, shown in the challenge and key authorization."""
    return {
        "challenge": challenge.id,
        "type": challenge.type,
        "token": challenge.token,
        "identifier": [authz.identifier_type, authz.identifier_value],
        "thumbprint": account.key_thumbprint,
    }


# --- finalize --------------------------------------------------------------------------------


def check_csr(
    order: OrderRow, csr_b64: Any, account_key: AccountKey
) -> tuple[Any, list[Identifier]]:
    """Parse the CSR and hold it to the order (RFC 8555 §7.4); raises badCSR/badPublicKey."""
    if not isinstance(csr_b64, str):
        raise ACMEProblem("malformed", "csr must be a base64url string")
    try:
        parsed = parse_csr(b64decode(csr_b64, "csr"))
    except CoreError as exc:
        raise from_core_error(exc) from None
    ordered = [Identifier(i["type"], i["value"]) for i in json.loads(order.identifiers)]
    requested = {(i.type, i.value) for i in parsed.identifiers}
    cn = common_name(parsed.subject)
    if cn is not None:
        try:
            cn_identifier = ("ip", str(ipaddress.ip_address(cn)))
        except ValueError:
            cn_identifier = ("dns", cn.lower().rstrip("."))
        requested.add(cn_identifier)
    if requested != {(i.type, i.value) for i in ordered}:
        raise ACMEProblem(
            "badCSR", "the CSR must name exactly the order's identifiers (subjectAltName and CN)"
        )
    spki = parsed.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    account_spki = account_key.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if spki == account_spki:
        raise ACMEProblem("badCSR", "the certificate key must not be the account key")
    return parsed, ordered


def begin_finalize(session: Session, order: OrderRow, now: datetime) -> None:
    """ready -> processing, exactly once even under concurrent finalize requests."""
    status = order_status(order, now)
    if status != "ready":
        raise ACMEProblem(
            "orderNotReady", f'the order is "{status}"; it can be finalized only when "ready"'
        )
    result = execute_statement(session.connection(), BEGIN_FINALIZE, {"order_id": order.id})
    if result.rowcount != 1:
        raise ACMEProblem("orderNotReady", "the order is already being finalized")
    # Already written by the UPDATE above: record it as loaded, not as a change to flush again.
    set_committed_value(order, "status", "processing")


def issue_for_order(
    acme: ACMEContext,
    account: AccountRow,
    order: OrderRow,
    parsed_csr: Any,
    identifiers: list[Identifier],
) -> None:
    """Ask the core for the certificate, then record the outcome on the order."""
    core = acme.core
    validity = None
    if order.not_after is not None:
        start = order.not_before or core.now()
        validity = max(1, int((order.not_after - start).total_seconds()))
    request = IssuanceRequest(
        channel="acme",
        requester=f"acme-account:{acme.account_url(account)}",
        profile=order.profile,
        public_key=parsed_csr.public_key,
        identifiers=tuple(identifiers),
        subject=parsed_csr.subject,
        validity_seconds=validity,
        not_before=order.not_before,
        requested_ekus=parsed_csr.requested_ekus,
        owner=owner_of(acme, account),
        csr_der=parsed_csr.der,
        metadata={"acme_order": order.public_id},
        on_recorded=lambda session, row_id: _order_issued(
            acme, session, order, row_id, identifiers
        ),
    )
    try:
        issued = core.issue(request)
    except Unavailable as exc:
        _set_order(acme, order, "ready", None)
        raise from_core_error(exc) from None
    except CoreError as exc:
        problem = from_core_error(exc)
        _set_order(acme, order, "invalid", problem.to_json())
        raise problem from None
    except Exception:
        _set_order(acme, order, "ready", None)
        raise
    order.status = "valid"
    order.certificate_id = issued.row_id


def _order_issued(
    acme: ACMEContext,
    session: Session,
    order: OrderRow,
    row_id: int,
    identifiers: list[Identifier],
) -> None:
    """In the core's issuing transaction: the order is valid exactly when its certificate exists."""
    execute_statement(
        session.connection(), ORDER_ISSUED, {"order_id": order.id, "issued_certificate_id": row_id}
    )
    names = {
        ratelimits.registered_name(i.value, acme.settings.registered_name_labels)
        if i.type == "dns"
        else i.value
        for i in identifiers
    }
    ratelimits.record(
        session, acme.settings.rate_limits, "certificates_per_name", sorted(names), acme.core.now()
    )


def _set_order(acme: ACMEContext, order: OrderRow, status: str, error: str | None) -> None:
    with acme.core.database.write() as session:
        session.execute(
            update(OrderRow).where(OrderRow.id == order.id).values(status=status, error=error)
        )
    order.status = status
    order.error = error
