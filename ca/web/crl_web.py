"""CRL endpoints: each issuer's whole CRL at the URL in certificates' CDP, its delta and shards.

GET /crl/<issuer>.crl                     the whole (complete) CRL, DER, application/pkix-crl
GET /crl/<issuer>/delta.crl               its delta CRL (with `[crl] delta = true`)
GET /crl/<issuer>/shard/<k>.crl           shard k's complete CRL (with `shards` > 1)
GET /crl/<issuer>/shard/<k>/delta.crl     shard k's delta CRL

Answers carry RFC 5019-style caching headers (max-age bounded by nextUpdate) with an ETag and
Last-Modified, and honour If-None-Match and If-Modified-Since. Anything not published is a 404.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

from flask import Blueprint, Flask, Response, request

from ca.core import CACore
from ca.crl import CRLCache, PublishedCRL, crl_settings
from ca.errors import CoreError

log = logging.getLogger("privca.crl")


def _text(status: int, message: str) -> Response:
    response = Response(message + "\n", status=status, mimetype="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response


def cache_headers(
    now: datetime, this_update: datetime, next_update: datetime, etag: str, max_age: int
) -> dict[str, str]:
    """RFC 5019 §6.2 headers: public, no-transform, must-revalidate, max-age up to nextUpdate."""
    seconds = max(0, min(int((next_update - now).total_seconds()), max_age))
    return {
        "Cache-Control": f"max-age={seconds}, public, no-transform, must-revalidate",
        "Last-Modified": format_datetime(this_update, usegmt=True),
        "Expires": format_datetime(min(next_update, now + timedelta(seconds=seconds)), usegmt=True),
        "ETag": etag,
    }


def not_modified(etag: str, last_modified: datetime) -> bool:
    """Whether the request's validators match (If-None-Match wins over If-Modified-Since)."""
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return etag in tags or "*" in tags
    if_modified_since = request.headers.get("If-Modified-Since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is not None:
            return last_modified.replace(microsecond=0) <= since
    return False


def init_app(app: Flask, core: CACore) -> None:
    """Mount the CRL endpoints."""
    from ca.web.app import register_error_renderer

    cache = CRLCache(core)
    max_age = crl_settings(core.config).max_age
    blueprint = Blueprint("privca_crl", __name__)

    def serve(issuer: str, shard: int, delta: bool) -> Response:
        try:
            published = cache.current(issuer, shard, delta)
        except CoreError as exc:
            log.warning("CRL for %s not available: %s", issuer, exc.safe_detail)
            return _text(503, "the CRL cannot be produced right now; try again later")
        if published is None:
            return _text(404, "no such CRL")
        return _response(published)

    def _response(published: PublishedCRL) -> Response:
        headers = cache_headers(
            core.now(), published.this_update, published.next_update, published.etag, max_age
        )
        if not_modified(published.etag, published.this_update):
            return Response(status=304, headers=headers)
        return Response(published.der, mimetype="application/pkix-crl", headers=headers)

    @blueprint.get("/crl/<issuer>.crl")
    def whole(issuer: str) -> Response:
        return serve(issuer, 0, False)

    @blueprint.get("/crl/<issuer>/delta.crl")
    def whole_delta(issuer: str) -> Response:
        return serve(issuer, 0, True)

    @blueprint.get("/crl/<issuer>/shard/<int:shard>.crl")
    def shard(issuer: str, shard: int) -> Response:
        return serve(issuer, shard, False) if shard > 0 else _text(404, "no such CRL")

    @blueprint.get("/crl/<issuer>/shard/<int:shard>/delta.crl")
    def shard_delta(issuer: str, shard: int) -> Response:
        return serve(issuer, shard, True) if shard > 0 else _text(404, "no such CRL")

    def render_error(exc: Exception) -> Response:
        code = getattr(exc, "code", None)
        if isinstance(code, int) and 400 <= code < 500:
            return _text(
                404 if code == 404 else code, "no such CRL" if code == 404 else "bad request"
            )
        return _text(500, "internal error; the request id is in the server log")

    app.register_blueprint(blueprint)
    register_error_renderer(app, "/crl/", render_error)
