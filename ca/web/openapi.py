"""The admin API's OpenAPI 3.1 description, served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any


def _op(summary: str, scope: str | None, responses: dict[str, str], **extra: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            code: {
                "description": text,
                "content": {
                    "application/json": {
                        "schema": {
                            "$ref": "#/components/schemas/Error"
                            if code[0] in "45"
                            else "#/components/schemas/Any"
                        }
                    }
                },
            }
            for code, text in responses.items()
        },
    }
    if scope is not None:
        operation["security"] = [{"bearer": []}]
        operation["description"] = f'Requires a token with the "{scope}" scope (or "admin").'
    operation.update(extra)
    return operation


_AUTH = {"401": "missing or invalid token", "403": "token lacks the scope"}
_SERIAL = {
    "name": "serial",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "hexadecimal serial number",
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "privca admin API", "version": "1"},
    "servers": [{"url": "/api/v1"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Any": {"type": "object"},
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
                    "csr": {"type": "string", "description": "PKCS#10 request, PEM"},
                    "profile": {"type": "string"},
                    "validity_days": {"type": "integer", "minimum": 1},
                    "owner": {"type": "string"},
                },
            },
            "RevokeRequest": {
                "type": "object",
                "properties": {
                    "reason": {
                        "type": "string",
                        "enum": [
                            "unspecified",
                            "keyCompromise",
                            "cACompromise",
                            "affiliationChanged",
                            "superseded",
                            "cessationOfOperation",
                            "privilegeWithdrawn",
                            "aACompromise",
                        ],
                    },
                    "invalidity_date": {"type": "string", "format": "date-time"},
                    "issuer": {"type": "string"},
                },
            },
            "TokenRequest": {
                "type": "object",
                "required": ["name", "scopes"],
                "properties": {
                    "name": {"type": "string"},
                    "scopes": {
                        "type": "array",
                        "items": {"enum": ["read", "issue", "revoke", "admin"]},
                    },
                },
            },
        },
    },
    "paths": {
        "/issuers": {
            "get": _op("List issuing CAs and their chains", "read", {"200": "issuers", **_AUTH})
        },
        "/profiles": {
            "get": _op("List certificate profiles", "read", {"200": "profiles", **_AUTH})
        },
        "/certificates": {
            "get": _op(
                "List certificates (keyset pagination)",
                "read",
                {"200": "a page of certificates", "400": "bad query", **_AUTH},
                parameters=[
                    {"name": n, "in": "query", "schema": {"type": t}}
                    for n, t in (
                        ("status", "string"),
                        ("issuer", "string"),
                        ("owner", "string"),
                        ("profile", "string"),
                        ("expiring_within", "string"),
                        ("after", "integer"),
                        ("limit", "integer"),
                    )
                ],
            ),
            "post": _op(
                "Issue a certificate from a CSR",
                "issue",
                {
                    "201": "issued",
                    "400": "bad CSR or request",
                    "403": "policy denied",
                    "401": "unauthorised",
                },
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/IssueRequest"}
                        }
                    },
                },
            ),
        },
        "/certificates/{serial}": {
            "get": _op(
                "Show one certificate",
                "read",
                {"200": "certificate", "404": "unknown serial", **_AUTH},
                parameters=[_SERIAL],
            )
        },
        "/certificates/{serial}/revoke": {
            "post": _op(
                "Revoke a certificate",
                "revoke",
                {"200": "revoked", "404": "unknown serial", "409": "already revoked", **_AUTH},
                parameters=[_SERIAL],
                requestBody={
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/RevokeRequest"}
                        }
                    }
                },
            )
        },
        "/audit": {
            "get": _op("Audit entries from a sequence number", "read", {"200": "entries", **_AUTH})
        },
        "/audit/verify": {
            "post": _op(
                "Verify the audit chain and checkpoints",
                "admin",
                {"200": "verification result", **_AUTH},
            )
        },
        "/tokens": {
            "get": _op("List API tokens (never their values)", "admin", {"200": "tokens", **_AUTH}),
            "post": _op(
                "Create an API token (its value is shown once)",
                "admin",
                {"201": "created", "400": "bad request", **_AUTH},
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/TokenRequest"}
                        }
                    },
                },
            ),
        },
        "/tokens/{id}": {
            "delete": _op(
                "Revoke an API token",
                "admin",
                {"200": "revoked", "404": "unknown token", **_AUTH},
                parameters=[
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
            )
        },
    },
}
