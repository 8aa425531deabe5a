"""The admin HTTP API under /api/v1: bearer tokens with scopes, JSON in and out.

Every operation goes through the same core functions as the CLI; errors are JSON
`{"error": kind, "detail": …}` with a 4xx status (never a stack trace).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ca import api_tokens, audit, inventory
from ca.config import MAX_DURATION, duration_text_seconds
from ca.core import CACore
from ca.csr import parse_csr
from ca.errors import BadCSR, BadRequest, CoreError
from ca.issuance_request import IssuanceRequest
from ca.revocation import parse_reason, revoke
from ca.storage.models import CERT_STATUSES
from ca.web.errors import core_error_response, json_error
from ca.web.openapi import DURATION, MAX_ID, MAX_PAGE, MAX_VALIDITY_DAYS, OPENAPI, SERIAL

PREFIX = "/api/v1"


def _json_body() -> dict[str, Any]:
    if not request.is_json:
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False
) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f'"{name}" is required')
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise BadRequest(f'"{name}" has the wrong type')
    return value


# The API accepts exactly what its OpenAPI document (ca.web.openapi) declares: a client
# checked against the document is never refused for form, and what the document rules out
# is refused here, not read some lenient way.
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_SERIAL = re.compile(SERIAL)
_DURATION_ARG = re.compile(DURATION)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; BadRequest names it otherwise."""
    text = request.args.get(name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f'"{name}" must be an integer')
    value = int(text)
    if not low <= value <= high:
        raise BadRequest(f'"{name}" must be from {low} to {high}')
    return value


def _serial(text: str) -> str:
    if not _SERIAL.fullmatch(text):
        raise BadRequest("the serial must be hexadecimal, at most 20 octets")
    return text


def _duration_arg(name: str) -> timedelta | None:
    """A duration query parameter ("30d"); zero and over a century are allowed (nothing, and
    everything still valid), since it only filters."""
    text = request.args.get(name)
    if text is None:
        return None
    seconds = duration_text_seconds(text) if _DURATION_ARG.fullmatch(text) else None
    if seconds is None:
        raise BadRequest(f'"{name}" must be a duration such as "30d", "12h" or "90m"')
    return timedelta(seconds=min(seconds, MAX_DURATION))


def _text(value: str | None, name: str, max_length: int = 256) -> str | None:
    """Free text a client sends (owners, names, filters): bounded, no control characters."""
    if value is None:
        return None
    if len(value) > max_length or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadRequest(f'"{name}" must be at most {max_length} printable characters')
    return value


def _datetime(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadRequest(f'"{name}" must be an ISO 8601 date-time with a zone') from None
    if parsed.tzinfo is None:
        raise BadRequest(f'"{name}" must carry a time zone (e.g. Z or +00:00)')
    return parsed


def requires_scope(core: CACore, scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for admin endpoints (front ends use it too): a bearer token holding `scope`.

    Sets `flask.g.actor` to "token:NAME#ID" for the audit log; raises Unauthorized/Forbidden,
    which the blueprint's CoreError handler renders.
    """

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            token = header[7:].strip() if header[:7].lower() == "bearer " else None
            now = core.now()
            with core.database.read() as session:
                info = api_tokens.authenticate(session, token, scope, now)
            api_tokens.record_use(core.database, info, now)
            g.actor = f"token:{info.name}#{info.id}"
            return view(*args, **kwargs)

        return wrapped

    return decorator


def init_app(app: Flask, core: CACore) -> None:
    blueprint = Blueprint("privca_admin", __name__, url_prefix=PREFIX)

    def requires(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return requires_scope(core, scope)

    @blueprint.get("/openapi.json")
    def openapi() -> Any:
        return jsonify(OPENAPI)

    @blueprint.get("/issuers")
    @requires("read")
    def list_issuers() -> Any:
        return {"issuers": [inventory.describe_issuer(i, core.urls) for i in core.issuers.values()]}

    @blueprint.get("/profiles")
    @requires("read")
    def list_profiles() -> Any:
        return {"profiles": [p.public_summary() for p in core.profiles.values()]}

    @blueprint.post("/certificates")
    @requires("issue")
    def issue_certificate() -> Any:
        body = _json_body()
        try:
            csr_bytes = _field(body, "csr", str, required=True).encode("utf-8")
        except UnicodeEncodeError:
            raise BadCSR("CSR is not a valid PKCS#10 request in PEM or DER") from None
        csr = parse_csr(csr_bytes)
        profile = _field(body, "profile", str, required=True)
        days = _field(body, "validity_days", int)
        if days is not None and not 1 <= days <= MAX_VALIDITY_DAYS:
            raise BadRequest(f'"validity_days" must be from 1 to {MAX_VALIDITY_DAYS}')
        owner = _text(_field(body, "owner", str), "owner")
        issued = core.issue(
            IssuanceRequest(
                channel="admin",
                requester=g.actor,
                profile=profile,
                public_key=csr.public_key,
                identifiers=csr.identifiers,
                subject=csr.subject,
                validity_seconds=days * 86400 if days else None,
                requested_ekus=csr.requested_ekus,
                owner=owner or g.actor,
                csr_der=csr.der,
            )
        )
        return {
            "issuer": issued.issuer.name,
            "serial": issued.serial_hex,
            "not_before": issued.certificate.not_valid_before_utc.isoformat(),
            "not_after": issued.certificate.not_valid_after_utc.isoformat(),
            "certificate": issued.pem.decode(),
            "chain": issued.chain_pem.decode(),
        }, 201

    @blueprint.get("/certificates")
    @requires("read")
    def list_certificates() -> Any:
        args = request.args
        limit = _int_arg("limit", 100, 1, MAX_PAGE)
        after = _int_arg("after", 0, 0, MAX_ID)
        within = _duration_arg("expiring_within")
        status = args.get("status")
        if status is not None and status not in CERT_STATUSES:
            raise BadRequest(f'"status" must be one of {", ".join(CERT_STATUSES)}')
        rows = inventory.list_certificates(
            core,
            status=status,
            issuer=_text(args.get("issuer"), "issuer", 64),
            owner=_text(args.get("owner"), "owner"),
            profile=_text(args.get("profile"), "profile", 64),
            expiring_within=within,
            after_id=after,
            limit=limit,
        )
        return {
            "certificates": rows,
            "next": f"{PREFIX}/certificates?after={rows[-1]['id']}&limit={limit}"
            if len(rows) == limit
            else None,
        }

    @blueprint.get("/certificates/<serial>")
    @requires("read")
    def show_certificate(serial: str) -> Any:
        issuer = _text(request.args.get("issuer"), "issuer", 64)
        return inventory.show_certificate(core, _serial(serial), issuer=issuer)

    @blueprint.post("/certificates/<serial>/revoke")
    @requires("revoke")
    def revoke_certificate(serial: str) -> Any:
        body = _json_body() if request.content_length else {}
        reason = body.get("reason")
        if (reason is not None and not isinstance(reason, str | int)) or isinstance(reason, bool):
            raise BadRequest('"reason" must be a reason name or code')
        result = revoke(
            core,
            _serial(serial),
            issuer_name=_text(_field(body, "issuer", str), "issuer", 64),
            reason=parse_reason(reason),
            invalidity_date=_datetime(_field(body, "invalidity_date", str), "invalidity_date"),
            actor=g.actor,
            channel="admin",
        )
        return {
            "issuer": result.issuer,
            "serial": result.serial,
            "reason": result.reason_name,
            "revoked_at": result.revoked_at.isoformat(),
        }

    @blueprint.get("/audit")
    @requires("read")
    def audit_entries() -> Any:
        since = _int_arg("since", 0, 0, MAX_ID)
        limit = _int_arg("limit", 100, 1, MAX_PAGE)
        entries = [
            e.to_dict() for e in audit.iter_entries(core.database, since_seq=since, limit=limit)
        ]
        return {"entries": entries}

    @blueprint.post("/audit/verify")
    @requires("admin")
    def audit_verify() -> Any:
        result = inventory.verify_audit(core)
        return {
            "ok": result.ok,
            "entries_checked": result.entries_checked,
            "checkpoints_checked": result.checkpoints_checked,
            "first_bad_seq": result.first_bad_seq,
            "problem": result.problem,
        }, 200

    @blueprint.get("/tokens")
    @requires("admin")
    def list_tokens() -> Any:
        with core.database.read() as session:
            return {
                "tokens": [inventory.describe_token(t) for t in api_tokens.list_tokens(session)]
            }

    @blueprint.post("/tokens")
    @requires("admin")
    def create_token() -> Any:
        body = _json_body()
        name = _text(_field(body, "name", str, required=True), "name", 128)
        scopes = api_tokens.parse_scopes(_field(body, "scopes", (str, list), required=True))
        with core.database.write() as session:
            token, info = api_tokens.create_token(session, name, scopes, core.now())
            core.audit(
                session,
                actor=g.actor,
                channel="admin",
                action="api_token_created",
                object=f"token:{info.id}",
                details={"name": name, "scopes": sorted(scopes)},
            )
        return {**inventory.describe_token(info), "token": token}, 201

    @blueprint.delete("/tokens/<int:token_id>")
    @requires("admin")
    def revoke_token(token_id: int) -> Any:
        with core.database.write() as session:
            info = api_tokens.revoke_token(session, token_id)
            core.audit(
                session,
                actor=g.actor,
                channel="admin",
                action="api_token_revoked",
                object=f"token:{info.id}",
                details={"name": info.name},
            )
        return inventory.describe_token(info)

    @blueprint.errorhandler(CoreError)
    def _core_error(exc: CoreError) -> Response:
        return core_error_response(exc)

    app.register_blueprint(blueprint)

    def render_api_error(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return json_error(
                exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or ""
            )
        return json_error(500, "internal", "internal error; the request id is in the server log")

    from ca.web.app import register_error_renderer

    register_error_renderer(app, PREFIX, render_api_error)
