"""The app factory: core endpoints, the admin API, and every front end found through entry points.

Front ends register under the `privca.frontends` entry-point group as `module:init_app`, and are
called as `init_app(app, core)`; this module never imports them by name, so the dependency arrows
stay front end -> ca -> hsm.
"""

from __future__ import annotations

import logging
import time
import uuid
from importlib.metadata import entry_points
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from ca import logs
from ca.config import Config, load_config
from ca.core import CACore
from ca.errors import CoreError
from ca.web import admin, crl_web, public
from ca.web.errors import core_error_response, json_error

log = logging.getLogger("privca.web")

FRONTEND_GROUP = "privca.frontends"

# URL prefix -> renderer for errors Flask raises before any blueprint runs (404, 405, 413).
ErrorRenderer = Any


def create_app(config: Config | None = None, core: CACore | None = None) -> Flask:
    """Build the WSGI app; without arguments it reads PRIVCA_CONFIG (as gunicorn workers do)."""
    if core is None:
        config = config or load_config()
        core = CACore.from_config(config)
    config = core.config
    logs.configure(config.logging.level, config.logging.json)
    app = Flask("privca")
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    app.extensions["privca.core"] = core
    app.extensions["privca.error_renderers"] = []  # list of (prefix, renderer)
    # PEM trust anchors for TLS client certificates that front ends accept (e.g. EST labels'
    # manufacturer CAs); `privca serve` adds them to the TLS server's client CA bundle.
    app.extensions["privca.tls_client_anchors"] = []

    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        if response.status_code == 413:
            _drain_request_body()
        response.headers["X-Request-ID"] = g.get("request_id", "")
        # Many device clients cannot read chunked bodies: always send a length when we know it.
        if not response.is_streamed and "Content-Length" not in response.headers:
            response.headers["Content-Length"] = str(len(response.get_data()))
        log.info(
            "request",
            extra={
                "request_id": g.get("request_id"),
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(
                    (time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2
                ),
                "remote": request.remote_addr,
            },
        )
        return response

    public.init_app(app, core)
    crl_web.init_app(app, core)
    admin.init_app(app, core)
    for entry_point in entry_points(group=FRONTEND_GROUP):
        entry_point.load()(app, core)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        response = app.make_response(_render_http_error(exc))
        # RFC 9110 §15.5.6: a 405 names the methods the resource does support.
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    def _render_http_error(exc: HTTPException) -> Any:
        for prefix, renderer in app.extensions["privca.error_renderers"]:
            if request.path.startswith(prefix):
                return renderer(exc)
        return json_error(
            exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or ""
        )

    @app.errorhandler(CoreError)
    def _core_error(exc: CoreError) -> Any:
        return core_error_response(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        for prefix, renderer in app.extensions["privca.error_renderers"]:
            if request.path.startswith(prefix):
                return renderer(exc)
        return json_error(500, "internal", "internal error; the request id is in the server log")

    return app


def register_error_renderer(app: Flask, prefix: str, renderer: ErrorRenderer) -> None:
    """A front end claims the errors under its URL prefix (routing 404/405/413 and crashes)."""
    app.extensions["privca.error_renderers"].append((prefix, renderer))


# A refused oversized body is read and dropped up to this much, so a client that sends its whole
# body before reading gets the 413 instead of a reset connection; beyond it, the connection
# closes (gunicorn does that for unread bodies).
_DRAIN_LIMIT = 1 << 20


def _drain_request_body() -> None:
    remaining = min(request.content_length or 0, _DRAIN_LIMIT)
    stream = request.environ.get("wsgi.input")
    while stream is not None and remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break
        remaining -= len(chunk)


def register_client_anchors(app: Flask, pem: bytes) -> None:
    """A front end asks the TLS server to accept client certificates under these CAs (PEM)."""
    app.extensions["privca.tls_client_anchors"].append(pem)
