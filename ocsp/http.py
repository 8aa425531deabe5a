"""OCSP over HTTP, independent of the server: what a request asks, and the answer's status,
headers and body (RFC 6960 App. A, RFC 5019 §5 and §6). The WSGI middleware (ocsp/web.py) and
the dedicated listener (ocsp/listener.py) both render through here, so they answer alike.

Every answer is an OCSPResponse: malformedRequest with 400 for anything that does not decode
(bad base64, bad DER, too big, too many CertIDs), unauthorized with 403 for issuers not served
here, tryLater with 503 when the token cannot sign, internalError with 500 only for a bug.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from ocsp import messages
from ocsp.responder import MALFORMED, Answer, Responder

if TYPE_CHECKING:
    from ca.metrics import Metrics

log = logging.getLogger("privca.ocsp")

PREFIX = "/ocsp"
CONTENT_TYPE = "application/ocsp-response"
REASONS = {status.value: status.phrase for status in HTTPStatus}
_ERROR_TYPES = {
    400: "malformedRequest",
    403: "unauthorized",
    404: "malformedRequest",
    405: "malformedRequest",
    500: "internalError",
    503: "tryLater",
}
_BASE64URL = str.maketrans("-_", "+/")
INTERNAL_ERROR = Answer(500, messages.error_response(messages.INTERNAL_ERROR))
NOT_FOUND = Answer(404, MALFORMED.der)
NOT_ALLOWED = Answer(405, MALFORMED.der)
ALLOW = ("Allow", "GET, POST")

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Rejection:
    """An HTTP request under PREFIX that carries no OCSP request to answer."""

    answer: Answer
    extra_headers: tuple[tuple[str, str], ...] = ()


def is_ocsp_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


POST_PATHS = (PREFIX, PREFIX + "/")  # where a POST carries an OCSP request (RFC 6960 A.1)


def is_post_path(path: str) -> bool:
    return path in POST_PATHS


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


def request_der(method: str, path: str, body: bytes | None, max_bytes: int) -> bytes | Rejection:
    """The DER OCSPRequest that `method` on the URL-decoded `path` carries, or why there is none.

    `body` is the POST body, None when it could not be read within the size limit.
    """
    if method == "POST":
        if not is_post_path(path):
            return Rejection(NOT_FOUND)
        return Rejection(MALFORMED) if body is None else body
    if method in ("GET", "HEAD"):
        der = decode_get_path(path[len(PREFIX) + 1 :], max_bytes)
        return Rejection(MALFORMED) if der is None else der
    return Rejection(NOT_ALLOWED, (ALLOW,))


def answer_request(
    responder: Responder, method: str, path: str, body: bytes | None, max_bytes: int
) -> tuple[Answer, tuple[tuple[str, str], ...], bytes | None]:
    """(answer, extra headers, cache key) for one HTTP request under PREFIX; never raises.

    The cache key is the responder's key of a cached answer (see Responder.answer_and_key).
    """
    try:
        der = request_der(method, path, body, max_bytes)
        if isinstance(der, Rejection):
            return der.answer, der.extra_headers, None
        answer, key = responder.answer_and_key(der)
        return answer, (), key
    except Exception:
        log.exception("OCSP request failed")
        return INTERNAL_ERROR, (), None


def cache_headers(answer: Answer, max_age: int, now: float | None = None) -> Headers:
    """RFC 5019 §6.2: max-age bounded by nextUpdate (and by `max_age`), public, no-transform,
    must-revalidate, with Last-Modified (thisUpdate), Expires (nextUpdate) and an ETag."""
    seconds = max(0, min(int(answer.next_update_ts - (now or time.time())), max_age))
    return [
        ("Cache-Control", f"max-age={seconds}, public, no-transform, must-revalidate"),
        ("Last-Modified", answer.last_modified),
        ("Expires", answer.expires),
        ("ETag", answer.etag),
    ]


def not_modified(answer: Answer, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """RFC 9110 §13.1.2: whether If-None-Match names the answer's ETag (cacheable answers only).

    If-Modified-Since is ignored (RFC 9110 §13.2.1 lets a server ignore preconditions; the full
    answer is always correct): its one-second resolution cannot tell a revoked answer signed in
    the same second as the "good" one the client holds, nor survive a node whose clock is
    behind, and a 304 would keep the client on "good".
    """
    if not answer.cacheable or if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return answer.etag in tags or "*" in tags


def render(
    answer: Answer,
    max_age: int,
    *,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    extra_headers: tuple[tuple[str, str], ...] = (),
    now: float | None = None,
) -> tuple[int, Headers, bytes]:
    """(HTTP status, headers, body) for an answer, 304 when the client's copy is current.

    The body is returned for HEAD too: the server leaves it out but keeps Content-Length.
    """
    if not_modified(answer, if_none_match, if_modified_since):
        return 304, cache_headers(answer, max_age, now), b""
    headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(answer.der)))]
    if answer.cacheable:
        headers += cache_headers(answer, max_age, now)
    else:
        headers.append(("Cache-Control", "no-store"))
    headers += extra_headers
    return answer.http_status, headers, answer.der


def count_error(metrics: Metrics, http_status: int) -> None:
    """Count an error answer in privca_http_errors_total{frontend="ocsp"}."""
    if http_status >= 400:
        metrics.http_errors.labels(
            frontend="ocsp", type=_ERROR_TYPES.get(http_status, "internalError")
        ).inc()
