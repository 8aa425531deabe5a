"""JSON error bodies for the core's own endpoints (the admin API, health, metrics)."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify

from ca.errors import CoreError

STATUS = {
    "bad_request": 400,
    "bad_csr": 400,
    "bad_public_key": 400,
    "policy_denied": 403,
    "unknown_profile": 400,
    "unknown_issuer": 404,
    "not_found": 404,
    "already_revoked": 409,
    "conflict": 409,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "lint_failed": 422,
    "unavailable": 503,
    "internal": 500,
}


def json_error(status: int, code: str, detail: str, **extra: Any) -> Response:
    body = {"error": code, "detail": detail, "request_id": g.get("request_id", ""), **extra}
    response = jsonify(body)
    response.status_code = status
    return response


def core_error_response(exc: CoreError) -> Response:
    status = STATUS.get(exc.kind, 500)
    extra: dict[str, Any] = {}
    if exc.per_identifier:
        extra["violations"] = [
            {"identifier": v.identifier, "detail": v.detail} for v in exc.per_identifier
        ]
    response = json_error(
        status,
        exc.kind,
        exc.safe_detail if status < 500 or status == 503 else "internal error",
        **extra,
    )
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="privca"'
    return response
