"""ACME problem documents (RFC 8555 §6.7, RFC 7807): the only error type this package raises.

Only registered `urn:ietf:params:acme:error:*` types are used. Core errors map by `kind`;
anything unmapped becomes `serverInternal` with a fixed detail (the exception goes to the log).
"""

from __future__ import annotations

import json
from typing import Any

from ca.errors import CoreError, Violation

ERROR_PREFIX = "urn:ietf:params:acme:error:"
PROBLEM_CONTENT_TYPE = "application/problem+json"

# Registered ACME error types (IANA "ACME Error Types": RFC 8555, RFC 9773 alreadyReplaced,
# draft-aaron-acme-profiles invalidProfile) with the status this server answers them with.
STATUS = {
    "accountDoesNotExist": 400,
    "alreadyReplaced": 409,
    "alreadyRevoked": 400,
    "badCSR": 400,
    "badNonce": 400,
    "badPublicKey": 400,
    "badRevocationReason": 400,
    "badSignatureAlgorithm": 400,
    "caa": 403,
    "compound": 403,
    "connection": 400,
    "dns": 400,
    "externalAccountRequired": 401,
    "incorrectResponse": 403,
    "invalidContact": 400,
    "invalidProfile": 400,
    "malformed": 400,
    "orderNotReady": 403,
    "rateLimited": 429,
    "rejectedIdentifier": 400,
    "serverInternal": 500,
    "tls": 400,
    "unauthorized": 403,
    "unsupportedContact": 400,
    "unsupportedIdentifier": 400,
    "userActionRequired": 403,
}

# The core says what went wrong; this says how ACME puts it (ca/errors.py kinds).
ACME_TYPE: dict[str, tuple[str, int]] = {
    "bad_request": ("malformed", 400),
    "bad_csr": ("badCSR", 400),
    "bad_public_key": ("badPublicKey", 400),
    "policy_denied": ("rejectedIdentifier", 400),
    "unknown_profile": ("invalidProfile", 400),
    "not_found": ("malformed", 404),
    "already_revoked": ("alreadyRevoked", 400),
    "unauthorized": ("unauthorized", 403),
    "forbidden": ("unauthorized", 403),
    "conflict": ("malformed", 409),
    "rate_limited": ("rateLimited", 429),
    "lint_failed": ("badCSR", 400),
    "unavailable": ("serverInternal", 503),
}


class ACMEProblem(Exception):
    """An ACME error: `type` is the short registered name (e.g. "badNonce")."""

    def __init__(
        self,
        type: str,
        detail: str,
        *,
        status: int | None = None,
        subproblems: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if type not in STATUS:
            raise ValueError(f"unregistered ACME error type {type}")
        super().__init__(detail)
        self.type = type
        self.detail = detail
        self.status = status or STATUS[type]
        self.subproblems = subproblems or []
        self.headers = headers or {}
        self.extra = extra or {}

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ERROR_PREFIX + self.type,
            "detail": self.detail,
            "status": self.status,
        }
        if self.subproblems:
            body["subproblems"] = self.subproblems
        body.update(self.extra)
        return body

    def to_json(self) -> str:
        return json.dumps(self.document(), separators=(",", ":"))


def identifier_object(identifier: str | None) -> dict[str, str] | None:
    """ "dns:example.com" (the core's form) -> {"type": "dns", "value": "example.com"}."""
    if not identifier or ":" not in identifier:
        return None
    kind, _, value = identifier.partition(":")
    return {"type": kind, "value": value}


def subproblems_from(violations: tuple[Violation, ...], type: str) -> list[dict[str, Any]]:
    result = []
    for violation in violations:
        identifier = identifier_object(violation.identifier)
        if identifier is None:
            continue
        result.append(
            {
                "type": ERROR_PREFIX + type,
                "detail": violation.detail,
                "status": STATUS[type],
                "identifier": identifier,
            }
        )
    return result


def from_core_error(exc: CoreError) -> ACMEProblem:
    kind, status = ACME_TYPE.get(exc.kind, ("serverInternal", 500))
    detail = exc.safe_detail if status != 500 else "internal error; the request id is in the log"
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    subproblems = subproblems_from(exc.per_identifier, kind) if exc.per_identifier else []
    if kind == "rejectedIdentifier" and not subproblems:
        # A policy refusal not tied to one name (key type, lifetime) is not about identifiers.
        kind, status = "badCSR", 400
    return ACMEProblem(kind, detail, status=status, subproblems=subproblems, headers=headers)
