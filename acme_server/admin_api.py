"""Admin API for the ACME front end, under /api/v1/acme (bearer token with the admin scope):
EAB keys (create, list, revoke) and ARI renewal overrides. Errors are the admin API's JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, g, jsonify, request

from acme_server import ari, eab
from ca.core import CACore
from ca.errors import BadRequest
from ca.web.admin import requires_scope

PREFIX = "/api/v1/acme"


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return body


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f'"{name}" must be a string')
    return value


def init_app(app: Flask, core: CACore) -> None:
    blueprint = Blueprint("privca_acme_admin", __name__, url_prefix=PREFIX)
    admin = requires_scope(core, "admin")
    directories = app.extensions["privca.acme"].settings.directories

    @blueprint.get("/eab")
    @admin
    def list_eab_keys() -> Any:
        return {"keys": eab.list_keys(core)}

    @blueprint.post("/eab")
    @admin
    def create_eab_key() -> Any:
        body = _body()
        owner = _optional_string(body, "owner")
        if not owner:
            raise BadRequest('"owner" is required')
        directory = _optional_string(body, "directory")
        if directory is not None and directory not in directories:
            raise BadRequest(f'no ACME directory named "{directory}"')
        created = eab.create_key(
            core, owner=owner, directory=directory, actor=g.actor, channel="admin"
        )
        response = jsonify(
            {
                "key_id": created.key_id,
                "hmac_key": created.hmac_key,
                "owner": created.owner,
                "directory": created.directory,
            }
        )
        response.status_code = 201
        response.headers["Cache-Control"] = "no-store"
        return response

    @blueprint.delete("/eab/<key_id>")
    @admin
    def revoke_eab_key(key_id: str) -> Any:
        return eab.revoke_key(core, key_id, actor=g.actor, channel="admin")

    @blueprint.post("/renewal-overrides")
    @admin
    def pull_renewal_forward() -> Any:
        body = _body()
        issued_before = _optional_string(body, "issued_before")
        parsed = None
        if issued_before is not None:
            try:
                parsed = datetime.fromisoformat(issued_before)
            except ValueError:
                raise BadRequest('"issued_before" must be an ISO 8601 date-time') from None
            if parsed.tzinfo is None:
                raise BadRequest('"issued_before" must carry a time zone')
        hours = body.get("window_hours", 24)
        if isinstance(hours, bool) or not isinstance(hours, int):
            raise BadRequest('"window_hours" must be an integer')
        result = ari.pull_forward(
            core,
            serial=_optional_string(body, "serial"),
            issuer_name=_optional_string(body, "issuer"),
            issued_before=parsed,
            window_hours=hours,
            explanation_url=_optional_string(body, "explanation_url"),
            actor=g.actor,
            channel="admin",
        )
        response = jsonify(result)
        response.status_code = 201
        return response

    app.register_blueprint(blueprint)
