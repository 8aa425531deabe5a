"""The OCSP endpoint: POST /ocsp and GET /ocsp/<base64 request> (RFC 6960 App. A, RFC 5019 §5).

It runs as WSGI middleware in front of the Flask app rather than as a blueprint: an OCSP answer
is a dictionary lookup, and Flask's routing, request objects and per-request JSON log line would
cost several times that (every TLS client of the organisation asks here). Consequently these
requests get no access-log line and no X-Request-ID; errors are counted in /metrics.

Every answer is an OCSPResponse: malformedRequest with 400 for anything that does not decode
(bad base64, bad DER, too big, too many CertIDs), unauthorized with 403 for issuers not served
here, tryLater with 503 when the token cannot sign, internalError with 500 only for a bug.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from typing import Any

from flask import Flask, Response

from ca.core import CACore
from ocsp import messages, presign
from ocsp.responder import MALFORMED, Answer, Responder
from ocsp.settings import OCSPSettings, ocsp_settings

log = logging.getLogger("privca.ocsp")

PREFIX = "/ocsp"
CONTENT_TYPE = "application/ocsp-response"
_STATUS_LINES = {
    200: "200 OK",
    304: "304 Not Modified",
    400: "400 Bad Request",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}
_ERROR_TYPES = {
    400: "malformedRequest",
    403: "unauthorized",
    404: "malformedRequest",
    405: "malformedRequest",
    500: "internalError",
    503: "tryLater",
}
_BASE64URL = str.maketrans("-_", "+/")

StartResponse = Callable[..., Any]


def decode_get_path(encoded: str, max_bytes: int) -> bytes | None:
    """The DER request from an RFC 5019 GET path (base64, URL-decoded; base64url tolerated)."""
    if not encoded or len(encoded) > (max_bytes * 4) // 3 + 4:
        return None
    text = encoded.translate(_BASE64URL)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def cache_headers(answer: Answer, max_age: int) -> list[tuple[str, str]]:
    """RFC 5019 §6.2: max-age bounded by nextUpdate (and by `max_age`), public, no-transform,
    must-revalidate, with Last-Modified (thisUpdate), Expires (nextUpdate) and an ETag."""
    seconds = max(0, min(int(answer.next_update_ts - time.time()), max_age))
    return [
        ("Cache-Control", f"max-age={seconds}, public, no-transform, must-revalidate"),
        ("Last-Modified", answer.last_modified),
        ("Expires", answer.expires),
        ("ETag", answer.etag),
    ]


def _not_modified(environ: dict[str, Any], answer: Answer) -> bool:
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return answer.etag in tags or "*" in tags
    since = environ.get("HTTP_IF_MODIFIED_SINCE")
    if not since:
        return False
    if since == answer.last_modified:
        return True
    try:
        return parsedate_to_datetime(since) >= parsedate_to_datetime(answer.last_modified)
    except (TypeError, ValueError):
        return False


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
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method == "POST":
                if path not in (PREFIX, PREFIX + "/"):
                    return self._send(start_response, Answer(404, MALFORMED.der), method)
                body = self._body(environ)
                answer = MALFORMED if body is None else self.responder.answer(body)
            elif method in ("GET", "HEAD"):
                request = decode_get_path(path[len(PREFIX) + 1 :], self.settings.max_request_bytes)
                answer = MALFORMED if request is None else self.responder.answer(request)
            else:
                return self._send(
                    start_response, Answer(405, MALFORMED.der), method, [("Allow", "GET, POST")]
                )
        except Exception:
            log.exception("OCSP request failed")
            answer = Answer(500, messages.error_response(messages.INTERNAL_ERROR))
        if answer.cacheable and _not_modified(environ, answer):
            start_response(_STATUS_LINES[304], cache_headers(answer, self.settings.max_age))
            return [b""]
        return self._send(start_response, answer, method)

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

    def _send(
        self,
        start_response: StartResponse,
        answer: Answer,
        method: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> Iterable[bytes]:
        headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(answer.der)))]
        if answer.cacheable:
            headers += cache_headers(answer, self.settings.max_age)
        else:
            headers.append(("Cache-Control", "no-store"))
        if answer.http_status >= 400:
            self.core.metrics.http_errors.labels(
                frontend="ocsp", type=_ERROR_TYPES.get(answer.http_status, "internalError")
            ).inc()
        if extra:
            headers += extra
        start_response(_STATUS_LINES[answer.http_status], headers)
        return [b""] if method == "HEAD" else [answer.der]


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
