"""The admin API's OpenAPI 3.1 description, served at /api/v1/openapi.json.

Parameters and bodies carry the limits the handlers enforce (ranges, lengths, patterns, enums),
so a client generated from this document sends what the server accepts, and every status an
operation can answer with is listed. tests/integration/test_admin_api_schema.py runs
schemathesis against a served copy to keep the two in step.
"""

from __future__ import annotations

from typing import Any

from ca.api_tokens import MAX_TOKEN_ID, SCOPES
from ca.revocation import REASON_NAMES, REASONS
from ca.storage.models import CERT_STATUSES

# Limits shared with ca.web.admin, which enforces them.
MAX_ID = 2**62  # ids and sequence numbers fit a signed 64-bit column on every engine
MAX_PAGE = 1000
MAX_VALIDITY_DAYS = 36500
# Free text (names, owners, filters): no control characters (C0 and DEL).
PRINTABLE = r"^[^\u0000-\u001f\u007f]*$"
DURATION = r"^[0-9]{1,12}[smhdw]?$"
# Hexadecimal, at most 20 octets: plain (leading zeros allowed) or in colon-separated octets.
SERIAL = r"^(0[xX])?([0-9A-Fa-f]{1,40}|[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){0,19})$"
_SCOPE = "(" + "|".join(SCOPES) + ")"
SCOPE_LIST = rf"^[\s,]*{_SCOPE}([\s,]+{_SCOPE})*[\s,]*$"

_ERRORS = {
    "400": "malformed or invalid request (the detail says what)",
    "401": "missing or invalid token",
    "403": "the token lacks the scope",
    "404": "no such object",
    "409": "conflicts with the object's state",
    "413": "the body is larger than server.max_body_bytes",
    "422": "pre-issuance lint refused the certificate",
    "503": "the signing token or the database is unavailable; retry later",
}


def _text(max_length: int, description: str, *, min_length: int = 0) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "string",
        "maxLength": max_length,
        "pattern": PRINTABLE,
        "description": description,
    }
    if min_length:
        schema["minLength"] = min_length
    return schema


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional body field: the handlers read null as leaving it out."""
    return {"anyOf": [schema, {"type": "null"}]}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(
    summary: str,
    scope: str,
    ok: tuple[str, str, str],
    errors: tuple[str, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    """An operation that needs a token with `scope`, answers `ok` = (status, description,
    schema name) and, besides 401/403, the error statuses in `errors`."""
    status, description, schema = ok
    responses = {status: {"description": description, "content": _json(_ref(schema))}}
    for code in sorted({"401", "403", *errors}):
        responses[code] = {"description": _ERRORS[code], "content": _json(_ref("Error"))}
    return {
        "summary": summary,
        "description": f'Requires a token with the "{scope}" scope (or "admin").',
        "security": [{"bearer": []}],
        "responses": responses,
        **extra,
    }


_SERIAL_PARAMETER = {
    "name": "serial",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": SERIAL},
    "description": "hexadecimal serial number, plain or in colon-separated octets",
}
_ISSUER_PARAMETER = _query(
    "issuer", _text(64, "issuer name"), "the issuer, where a serial exists under several"
)

_OBJECT = {"type": "object"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string"},
            "detail": {"type": "string"},
            "request_id": {"type": "string"},
            "violations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "identifier": {"type": ["string", "null"]},
                        "detail": {"type": "string"},
                    },
                },
            },
        },
    },
    "IssueRequest": {
        "type": "object",
        "required": ["csr", "profile"],
        "properties": {
            "csr": {"type": "string", "minLength": 1, "description": "PKCS#10 request, PEM"},
            "profile": _text(64, "profile name", min_length=1),
            "validity_days": _optional(
                {"type": "integer", "minimum": 1, "maximum": MAX_VALIDITY_DAYS}
            ),
            "owner": _optional(_text(256, "who the certificate is for (default: the token)")),
        },
    },
    "Issued": {
        "type": "object",
        "required": ["issuer", "serial", "not_before", "not_after", "certificate", "chain"],
        "properties": {
            "issuer": {"type": "string"},
            "serial": {"type": "string"},
            "not_before": {"type": "string", "format": "date-time"},
            "not_after": {"type": "string", "format": "date-time"},
            "certificate": {"type": "string"},
            "chain": {"type": "string"},
        },
    },
    "Certificate": {
        "type": "object",
        "required": ["id", "issuer", "serial", "status"],
        "properties": {
            "id": {"type": "integer"},
            "issuer": {"type": ["string", "null"]},
            "serial": {"type": "string"},
            "status": {"type": "string", "enum": list(CERT_STATUSES)},
            "certificate": {"type": "string"},
        },
    },
    "CertificatePage": {
        "type": "object",
        "required": ["certificates", "next"],
        "properties": {
            "certificates": {"type": "array", "items": _ref("Certificate")},
            "next": {"type": ["string", "null"], "description": "the next page's URL"},
        },
    },
    "RevokeRequest": {
        "type": "object",
        "properties": {
            "reason": {
                "oneOf": [
                    {
                        "type": "string",
                        "enum": [*REASONS, *(str(code) for code in sorted(REASON_NAMES))],
                    },
                    {"type": "integer", "enum": sorted(REASON_NAMES)},
                    {"type": "null"},
                ],
                "description": "RFC 5280 reason, by name or code (certificateHold is not used)",
            },
            "invalidity_date": _optional(
                {
                    "type": "string",
                    "format": "date-time",
                    "description": "when the key is known or suspected to have been compromised",
                }
            ),
            "issuer": _optional(_text(64, "issuer name, where a serial exists under several")),
        },
    },
    "Revoked": {
        "type": "object",
        "required": ["issuer", "serial", "reason", "revoked_at"],
        "properties": {
            "issuer": {"type": "string"},
            "serial": {"type": "string"},
            "reason": {"type": "string"},
            "revoked_at": {"type": "string", "format": "date-time"},
        },
    },
    "TokenRequest": {
        "type": "object",
        "required": ["name", "scopes"],
        "properties": {
            "name": _text(128, "a name to recognise the token by", min_length=1),
            "scopes": {
                "oneOf": [
                    {
                        "type": "array",
                        "items": {"type": "string", "enum": list(SCOPES)},
                        "minItems": 1,
                    },
                    {
                        "type": "string",
                        "pattern": SCOPE_LIST,
                        "description": "scope names separated by commas or spaces",
                    },
                ]
            },
        },
    },
    "Token": {
        "type": "object",
        "required": ["id", "name", "scopes"],
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "token": {"type": "string", "description": "the token itself, shown only once"},
        },
    },
    "Issuers": {"type": "object", "required": ["issuers"]},
    "Profiles": {"type": "object", "required": ["profiles"]},
    "AuditEntries": {"type": "object", "required": ["entries"]},
    "AuditVerification": {
        "type": "object",
        "required": ["ok", "entries_checked", "checkpoints_checked"],
        "properties": {
            "ok": {"type": "boolean"},
            "entries_checked": {"type": "integer"},
            "checkpoints_checked": {"type": "integer"},
            "first_bad_seq": {"type": ["integer", "null"]},
            "problem": {"type": ["string", "null"]},
        },
    },
    "Tokens": {
        "type": "object",
        "required": ["tokens"],
        "properties": {"tokens": {"type": "array", "items": _ref("Token")}},
    },
}

_PAGE = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "privca admin API", "version": "1"},
    "servers": [{"url": "/api/v1"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": _SCHEMAS,
    },
    "paths": {
        "/issuers": {
            "get": _op("List issuing CAs and their chains", "read", ("200", "issuers", "Issuers"))
        },
        "/profiles": {
            "get": _op("List certificate profiles", "read", ("200", "profiles", "Profiles"))
        },
        "/certificates": {
            "get": _op(
                "List certificates (keyset pagination)",
                "read",
                ("200", "a page of certificates", "CertificatePage"),
                ("400", "404"),
                parameters=[
                    _query("status", {"type": "string", "enum": list(CERT_STATUSES)}, "status"),
                    _query("issuer", _text(64, "issuer name"), "issued by this issuer"),
                    _query("owner", _text(256, "owner"), "recorded for this owner"),
                    _query("profile", _text(64, "profile name"), "issued with this profile"),
                    _query(
                        "expiring_within",
                        {"type": "string", "pattern": DURATION},
                        'expiring within this duration ("30d", "12h"): issued ones only',
                    ),
                    _query(
                        "after",
                        {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                        "the last id of the previous page",
                    ),
                    _query("limit", _PAGE, "page size (default 100)"),
                ],
            ),
            "post": _op(
                "Issue a certificate from a CSR",
                "issue",
                ("201", "issued", "Issued"),
                ("400", "404", "413", "422", "503"),
                requestBody={"required": True, "content": _json(_ref("IssueRequest"))},
            ),
        },
        "/certificates/{serial}": {
            "get": _op(
                "Show one certificate",
                "read",
                ("200", "certificate", "Certificate"),
                ("400", "404", "409"),
                parameters=[_SERIAL_PARAMETER, _ISSUER_PARAMETER],
            )
        },
        "/certificates/{serial}/revoke": {
            "post": _op(
                "Revoke a certificate",
                "revoke",
                ("200", "revoked", "Revoked"),
                ("400", "404", "409", "413", "503"),
                parameters=[_SERIAL_PARAMETER],
                requestBody={"required": False, "content": _json(_ref("RevokeRequest"))},
            )
        },
        "/audit": {
            "get": _op(
                "Audit entries from a sequence number",
                "read",
                ("200", "entries", "AuditEntries"),
                ("400",),
                parameters=[
                    _query(
                        "since",
                        {"type": "integer", "minimum": 0, "maximum": MAX_ID},
                        "the first sequence number",
                    ),
                    _query("limit", _PAGE, "how many entries (default 100)"),
                ],
            )
        },
        "/audit/verify": {
            "post": _op(
                "Verify the audit chain and checkpoints",
                "admin",
                ("200", "verification result", "AuditVerification"),
            )
        },
        "/tokens": {
            "get": _op(
                "List API tokens (never their values)", "admin", ("200", "tokens", "Tokens")
            ),
            "post": _op(
                "Create an API token (its value is shown once)",
                "admin",
                ("201", "created", "Token"),
                ("400", "413"),
                requestBody={"required": True, "content": _json(_ref("TokenRequest"))},
            ),
        },
        "/tokens/{id}": {
            "delete": _op(
                "Revoke an API token",
                "admin",
                ("200", "revoked", "Token"),
                ("404",),
                parameters=[
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID},
                    }
                ],
            )
        },
    },
}
