"""The OCSP endpoint in the main app: POST /ocsp and GET /ocsp/<base64 request>.

It runs as WSGI middleware in front of the Flask app rather than as a blueprint: an OCSP answer
is a dictionary lookup, and Flask's routing, request objects and per-request JSON log line would
cost several times that (every TLS client of the organisation asks here). Consequently these
requests get no access-log line and no X-Request-ID; errors are counted in /metrics. What is
answered, with which status and headers, is ocsp/http.py's, shared with the dedicated listener
(ocsp/listener.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response

from ca.core import CACore
from ocsp import http, presign
from ocsp.responder import MALFORMED, Responder
from ocsp.settings import OCSPSettings, ocsp_settings

PREFIX = http.PREFIX
CONTENT_TYPE = http.CONTENT_TYPE

StartResponse = Callable[..., Any]


class OCSPEndpoint:
    """WSGI middleware answering /ocsp and /ocsp/…; everything else goes to the wrapped app."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        core: CACore,
        responder: Responder,
        settings: OCSPSettings,
    ) -> None:
        self.app = app
        self.core = core
        self.responder = responder
        self.settings = settings

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not http.is_ocsp_path(path):
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        body = self._body(environ) if method == "POST" else None
        answer, extra, _ = http.answer_request(
            self.responder, method, path, body, self.settings.max_request_bytes
        )
        status, headers, payload = http.render(
            answer,
            self.settings.max_age,
            if_none_match=environ.get("HTTP_IF_NONE_MATCH"),
            if_modified_since=environ.get("HTTP_IF_MODIFIED_SINCE"),
            extra_headers=extra,
        )
        http.count_error(self.core.metrics, status)
        start_response(f"{status} {http.REASONS[status]}", headers)
        return [b""] if method == "HEAD" or status == 304 else [payload]

    def _body(self, environ: dict[str, Any]) -> bytes | None:
        limit = self.settings.max_request_bytes
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            return None
        if length > limit:
            return None  # not read: the connection is closed after an error with a body left
        stream = environ["wsgi.input"]
        body = stream.read(length) if length >= 0 else stream.read(limit + 1)
        if len(body) > limit or (length >= 0 and len(body) != length):
            return None
        return body


def init_app(app: Flask, core: CACore) -> None:
    """Mount the responder in front of the app and register its jobs and listeners."""
    from ca.web.app import register_error_renderer

    settings = ocsp_settings(core.config)
    responder = Responder(core, settings)
    presign.install(core, responder)
    app.extensions["privca.ocsp"] = responder
    app.wsgi_app = OCSPEndpoint(app.wsgi_app, core, responder, settings)  # type: ignore[method-assign]

    def render_error(exc: Exception) -> Response:
        # Only reached if a request under /ocsp slips past the middleware (it should not).
        return Response(
            MALFORMED.der, status=400, mimetype=CONTENT_TYPE, headers={"Cache-Control": "no-store"}
        )

    register_error_renderer(app, PREFIX, render_error)
