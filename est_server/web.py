"""EST over HTTPS (RFC 7030 with RFC 8951) under /.well-known/est/ and /.well-known/est/<label>/,
plus its admin endpoints under /api/v1/est/.

Errors are EST's own: an HTTP status and a text/plain reason (401 with WWW-Authenticate: Basic
when the label takes Basic credentials, 202 and 503 with Retry-After). Routing errors and crashes
under the EST prefix come here too, through the app factory's error renderer.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ca.core import CACore
from ca.csr import parse_csr
from ca.errors import BadRequest, CoreError, NotFound
from ca.web.admin import requires_scope
from ca.web.app import register_client_anchors, register_error_renderer
from ca.web.errors import core_error_response
from est_server import enrollment, messages, storage, users
from est_server.auth import BasicVerifier, peer_certificate, tls_unique
from est_server.config import ESTSettings, Label, parse_settings

log = logging.getLogger("privca.est")

PREFIX = "/.well-known/est"
ADMIN_PREFIX = "/api/v1/est"

STATUS = {
    "bad_request": 400,
    "bad_csr": 400,
    "bad_public_key": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "policy_denied": 403,
    "lint_failed": 403,
    "not_found": 404,
    "conflict": 409,
    "rate_limited": 429,
    "est_not_supported": 501,
    "unknown_issuer": 503,
    "unavailable": 503,
}

FULLCMC_TEXT = (
    "fullcmc (RFC 7030 section 4.3) is not implemented by this server; use simpleenroll, "
    "simplereenroll or serverkeygen"
)


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    response = Response(text.rstrip("\n") + "\n", status=status, mimetype="text/plain")
    response.headers.update(headers or {})
    return response


def base64_response(der: bytes, content_type: str) -> Response:
    response = Response(messages.wrap_base64(der), status=200, content_type=content_type)
    response.headers["Content-Transfer-Encoding"] = "base64"
    return response


def render_est_error(exc: BaseException, core: CACore | None = None) -> Response:
    """EST's error format for core errors, routing errors and anything unexpected."""
    headers: dict[str, str] = {}
    if isinstance(exc, CoreError):
        status = STATUS.get(exc.kind, 500)
        text = exc.safe_detail if status < 500 or status in (501, 503) else "internal error"
        kind = exc.kind
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        elif status == 503:
            headers["Retry-After"] = "60"
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        kind = f"http_{status}"
        if isinstance(exc, RequestEntityTooLarge):
            text = "the request body is too large"
        elif status == 404:
            text = "no such EST resource; the operations are cacerts, simpleenroll, "
            text += "simplereenroll, csrattrs, serverkeygen and fullcmc"
        elif status == 405:
            text = "this EST operation does not take that method (cacerts and csrattrs are GET, "
            text += "the others POST)"
        else:
            text = exc.description or exc.name
    else:
        status, kind = 500, "internal"
        text = f"internal error; request id {g.get('request_id', '')}"
    label: Label | None = g.get("est_label")
    if status == 401 and label is not None and label.accepts_basic:
        headers["WWW-Authenticate"] = f'Basic realm="{label.realm}", charset="UTF-8"'
    if core is not None:
        core.metrics.http_errors.labels(frontend="est", type=kind).inc()
    return text_response(status, text, headers)


def init_app(app: Flask, core: CACore) -> None:
    settings = parse_settings(core.config)
    verifier = BasicVerifier(
        core.database,
        settings.password_hash,
        settings.basic_cache_seconds,
        settings.basic_recheck_seconds,
    )
    for label in settings.labels.values():
        if label.trust_anchors_pem:
            register_client_anchors(app, label.trust_anchors_pem)
    app.extensions["privca.est"] = settings
    register_error_renderer(app, PREFIX, lambda exc: render_est_error(exc, core))
    app.register_blueprint(_protocol_blueprint(core, settings, verifier))
    app.register_blueprint(_admin_blueprint(core, settings))


def _protocol_blueprint(core: CACore, settings: ESTSettings, verifier: BasicVerifier) -> Blueprint:
    est = Blueprint("privca_est", __name__, url_prefix=PREFIX)
    server = core.config.server

    def resolve(name: str | None) -> Label:
        label = settings.label(name)
        if label is None:
            if name is None:
                raise NotFound(
                    "this server has no default EST label; use /.well-known/est/<label>/"
                )
            raise NotFound(f'no EST label "{name}"')
        g.est_label = label
        return label

    def issuer_chain(label: Label) -> list[Any]:
        issuer = core.issuers.get(label.issuer)
        if issuer is None:
            from ca.errors import UnknownIssuer

            raise UnknownIssuer(f'the issuing CA "{label.issuer}" has no certificate yet')
        return list(issuer.chain)

    def read_csr() -> Any:
        body = request.get_data(cache=False)
        der = messages.decode_body(body, request.headers.get("Content-Transfer-Encoding"))
        return parse_csr(der)

    def enroll(name: str | None, operation: str) -> Response:
        label = resolve(name)
        if operation == "serverkeygen" and not label.serverkeygen:
            raise enrollment.NotSupported(
                f'label "{label.name}" does not offer server-side key generation'
            )
        peer = peer_certificate(request.environ, server.trusted_proxies, server.client_cert_header)
        identity = enrollment.authenticate(
            core, verifier, label, operation, request.headers.get("Authorization"), peer
        )
        csr = read_csr()
        if label.require_channel_binding:
            enrollment.check_channel_binding(label, csr, tls_unique(request.environ))
        if operation == "simplereenroll":
            assert identity.peer is not None
            enrollment.check_reenrollment(label, csr, identity.peer.certificate)
        if operation == "serverkeygen":
            enrollment.reject_key_encryption(csr.der)
        outcome = enrollment.enroll(core, label, operation, identity, csr)
        if isinstance(outcome, enrollment.Held):
            # RFC 7030 §4.2.3: 202 with Retry-After; the same request again gets the answer.
            return text_response(
                202,
                f"enrollment request #{outcome.request_id} is waiting for an operator's "
                "approval; send the same request again later",
                {"Retry-After": str(outcome.retry_after)},
            )
        certificate = messages.certs_only([outcome.certificate])
        if outcome.private_key is None:
            return base64_response(certificate, messages.CERTS_ONLY_TYPE)
        body, content_type = messages.multipart_key_and_certificate(
            enrollment.pkcs8(outcome.private_key), certificate
        )
        return Response(body, status=200, content_type=content_type)

    @est.get("/cacerts", defaults={"name": None})
    @est.get("/<name>/cacerts")
    def cacerts(name: str | None) -> Response:
        label = resolve(name)
        response = base64_response(
            messages.certs_only(issuer_chain(label)), messages.CERTS_ONLY_TYPE
        )
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    @est.get("/csrattrs", defaults={"name": None})
    @est.get("/<name>/csrattrs")
    def csrattrs(name: str | None) -> Response:
        label = resolve(name)
        oids = list(label.csrattrs)
        if label.require_channel_binding:
            oids.append(messages.CHALLENGE_PASSWORD)
        der = messages.csr_attrs(oids, label.key_type)
        if der is None:
            response = Response(status=204)
            del response.headers["Content-Type"]
            return response
        return base64_response(der, messages.CSRATTRS_TYPE)

    @est.post("/simpleenroll", defaults={"name": None})
    @est.post("/<name>/simpleenroll")
    def simpleenroll(name: str | None) -> Response:
        return enroll(name, "simpleenroll")

    @est.post("/simplereenroll", defaults={"name": None})
    @est.post("/<name>/simplereenroll")
    def simplereenroll(name: str | None) -> Response:
        return enroll(name, "simplereenroll")

    @est.post("/serverkeygen", defaults={"name": None})
    @est.post("/<name>/serverkeygen")
    def serverkeygen(name: str | None) -> Response:
        return enroll(name, "serverkeygen")

    @est.post("/fullcmc", defaults={"name": None})
    @est.post("/<name>/fullcmc")
    def fullcmc(name: str | None) -> Response:
        resolve(name)
        return text_response(501, FULLCMC_TEXT)

    @est.errorhandler(CoreError)
    def _core_error(exc: CoreError) -> Response:
        return render_est_error(exc, core)

    return est


def _admin_blueprint(core: CACore, settings: ESTSettings) -> Blueprint:
    admin = Blueprint("privca_est_admin", __name__, url_prefix=ADMIN_PREFIX)

    def body() -> dict[str, Any]:
        if not request.content_length:
            return {}
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data

    def optional_string(data: dict[str, Any], key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f'"{key}" must be a string')
        return value

    @admin.get("/labels")
    @requires_scope(core, "read")
    def list_labels() -> Any:
        return {
            "default_label": settings.default_label,
            "labels": [
                {
                    "name": label.name,
                    "profile": label.profile,
                    "issuer": label.issuer,
                    "auth": label.auth,
                    "manual_approval": label.manual_approval,
                    "serverkeygen": label.serverkeygen,
                    "trust_anchors": [a.subject.rfc4514_string() for a in label.trust_anchors],
                }
                for label in settings.labels.values()
            ],
        }

    @admin.get("/users")
    @requires_scope(core, "read")
    def list_users() -> Any:
        return {"users": [u.describe() for u in users.list_users(core)]}

    @admin.post("/users")
    @requires_scope(core, "admin")
    def create_user() -> Any:
        data = body()
        username = optional_string(data, "username")
        if not username:
            raise BadRequest('"username" is required')
        user, password = users.create_user(
            core,
            settings,
            username,
            label=optional_string(data, "label"),
            password=optional_string(data, "password"),
            actor=g.actor,
            channel="admin",
        )
        # The password is in this answer once, and never again.
        return {**user.describe(), "password": password}, 201

    @admin.delete("/users/<username>")
    @requires_scope(core, "admin")
    def delete_user(username: str) -> Any:
        return users.delete_user(core, username, actor=g.actor, channel="admin").describe()

    @admin.get("/requests")
    @requires_scope(core, "read")
    def list_requests() -> Any:
        status = request.args.get("status")
        if status is not None and status not in storage.REQUEST_STATUSES:
            raise BadRequest(f'"status" must be one of {", ".join(storage.REQUEST_STATUSES)}')
        with core.database.read() as session:
            return {"requests": [r.describe() for r in storage.list_requests(session, status)]}

    @admin.post("/requests/<int:request_id>/approve")
    @requires_scope(core, "issue")
    def approve(request_id: int) -> Any:
        decided = enrollment.decide(
            core, request_id, approve=True, actor=g.actor, channel="admin", reason=None
        )
        return decided.describe()

    @admin.post("/requests/<int:request_id>/reject")
    @requires_scope(core, "issue")
    def reject(request_id: int) -> Any:
        reason = optional_string(body(), "reason")
        decided = enrollment.decide(
            core, request_id, approve=False, actor=g.actor, channel="admin", reason=reason
        )
        return decided.describe()

    @admin.errorhandler(CoreError)
    def _core_error(exc: CoreError) -> Response:
        return core_error_response(exc)

    return admin
