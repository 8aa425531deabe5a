"""A strict, bounded HTTP/1.1 request parser for the OCSP listener (RFC 9112).

It parses from an offset into a buffer so pipelined requests cost no copies, understands only
what an OCSP server needs (Content-Length and chunked bodies, Connection, Expect, Host and the
conditional-request headers) and refuses whatever could frame a request two ways: both
Content-Length and Transfer-Encoding, differing Content-Lengths, bare CR or LF, obsolete line
folding, whitespace before a colon. Refusals are ProtocolError with the HTTP status to send;
the connection is closed after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

MAX_HEADERS = 100
MAX_CHUNK_LINE = 1024
MAX_TRAILERS = 8192

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,8}")


class ProtocolError(Exception):
    """A request that cannot be answered normally; `status` is the HTTP status to send."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class BodyTooLarge(ProtocolError):
    """The body is over the limit; `remaining` bytes of it are still to come (-1: unknown)."""

    def __init__(self, remaining: int) -> None:
        super().__init__(400, "request body too large")
        self.remaining = remaining


@dataclass(slots=True)
class RequestHead:
    """A parsed request line and header section; `end` is the offset just past it."""

    method: str
    target: bytes
    path: str  # percent-decoded, without query
    keep_alive: bool
    content_length: int  # -1 with a chunked body
    expect_continue: bool
    if_none_match: str | None
    if_modified_since: str | None
    end: int


def request_path(target: bytes) -> str:
    """The percent-decoded path of an origin-form or absolute-form request target."""
    if target[:1] != b"/":
        lowered = target[:8].lower()
        if lowered.startswith(b"http://"):
            start = 7
        elif lowered.startswith(b"https://"):
            start = 8
        else:
            raise ProtocolError(400, "request target must be a path or an absolute URL")
        slash = target.find(b"/", start)
        target = target[slash:] if slash >= 0 else b"/"
    path = target.partition(b"?")[0]
    if b"%" in path:
        path = unquote_to_bytes(path)
    return path.decode("latin-1")


def parse_head(buffer: bytes, start: int, max_head: int) -> RequestHead | None:
    """The request head at `start`, or None until the blank line that ends it has arrived."""
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0 and len(buffer) - start <= max_head:
        if buffer.find(b"\n\n", start) >= 0 or buffer.find(b"\n\r\n", start) >= 0:
            raise ProtocolError(400, "bare LF in the request head")
        return None
    if end < 0 or end - start > max_head:
        if buffer.find(b"\r\n", start, start + max_head) < 0:
            raise ProtocolError(414, "request line too long")
        raise ProtocolError(431, "request header section too large")
    head = buffer[start:end]
    lines = head.split(b"\r\n")
    # A CR or LF anywhere but in a CRLF pair could frame the request differently elsewhere.
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
        raise ProtocolError(400, "bare CR or LF in the request head")
    if len(lines) > MAX_HEADERS + 1:
        raise ProtocolError(431, "too many header fields")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ProtocolError(400, "malformed request line")
    method, target, version = parts
    if version == b"HTTP/1.1":
        keep_alive = True
    elif version == b"HTTP/1.0":
        keep_alive = False  # answered, then closed: keep-alive is optional for HTTP/1.0
    elif _VERSION.fullmatch(version):
        raise ProtocolError(505, "HTTP version not supported")
    else:
        raise ProtocolError(400, "malformed request line")
    if _TOKEN.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        raise ProtocolError(400, "malformed request line")
    path = request_path(target)

    hosts = 0
    content_length = -2  # none given
    chunked = False
    expect_continue = False
    if_none_match = None
    if_modified_since = None
    for line in lines[1:]:
        name, colon, raw_value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise ProtocolError(400, "malformed header field")
        value = raw_value.strip(b" \t")
        name = name.lower()
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            if not value.isdigit() or len(value) > 15:
                raise ProtocolError(400, "invalid Content-Length")
            if content_length not in (-2, int(value)):
                raise ProtocolError(400, "conflicting Content-Length fields")
            content_length = int(value)
        elif name == b"transfer-encoding":
            if version != b"HTTP/1.1":
                raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 request")
            codings = [c.strip(b" \t").lower() for c in value.split(b",")]
            if chunked or codings[-1] != b"chunked":
                raise ProtocolError(400, "the final transfer coding must be chunked")
            if len(codings) != 1:
                raise ProtocolError(501, "transfer coding not implemented")
            chunked = True
        elif name == b"connection":
            if b"close" in [t.strip(b" \t").lower() for t in value.split(b",")]:
                keep_alive = False
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise ProtocolError(417, "unsupported expectation")
            expect_continue = True
        elif name == b"if-none-match":
            if_none_match = value.decode("latin-1")
        elif name == b"if-modified-since":
            if_modified_since = value.decode("latin-1")
    if chunked and content_length != -2:
        raise ProtocolError(400, "both Content-Length and Transfer-Encoding")
    if hosts > 1 or (hosts == 0 and version == b"HTTP/1.1"):
        raise ProtocolError(400, "an HTTP/1.1 request needs exactly one Host field")
    return RequestHead(
        method.decode("ascii"),
        target,
        path,
        keep_alive,
        -1 if chunked else max(content_length, 0),
        expect_continue,
        if_none_match,
        if_modified_since,
        end + 4,
    )


def read_body(buffer: bytes, head: RequestHead, limit: int) -> tuple[bytes, int] | None:
    """(body, offset past it) once all of it has arrived, else None; BodyTooLarge over `limit`."""
    start = head.end
    if head.content_length >= 0:
        if head.content_length > limit:
            raise BodyTooLarge(max(0, head.content_length - (len(buffer) - start)))
        end = start + head.content_length
        if len(buffer) < end:
            return None
        return buffer[start:end], end
    return _read_chunked(buffer, start, limit)


def _read_chunked(buffer: bytes, position: int, limit: int) -> tuple[bytes, int] | None:
    chunks = []
    total = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            if len(buffer) - position > MAX_CHUNK_LINE:
                raise ProtocolError(400, "chunk size line too long")
            return None
        size_text = buffer[position:line_end].partition(b";")[0].strip(b" \t")
        if _HEX.fullmatch(size_text) is None:
            raise ProtocolError(400, "malformed chunk size")
        size = int(size_text, 16)
        position = line_end + 2
        if size == 0:
            break
        total += size
        if total > limit:
            raise BodyTooLarge(-1)
        data_end = position + size
        if len(buffer) < data_end + 2:
            return None
        if buffer[data_end : data_end + 2] != b"\r\n":
            raise ProtocolError(400, "chunk data not followed by CRLF")
        chunks.append(buffer[position:data_end])
        position = data_end + 2
    trailers_start = position
    while True:  # trailer fields are read and ignored
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            if len(buffer) - trailers_start > MAX_TRAILERS:
                raise ProtocolError(431, "trailer section too large")
            return None
        if line_end == position:
            return b"".join(chunks), line_end + 2
        position = line_end + 2
