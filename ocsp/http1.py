"""A strict, bounded HTTP/1.1 request parser for the OCSP listener (RFC 9112).

It parses from an offset into a buffer so pipelined requests cost no copies, understands only
what an OCSP server needs (Content-Length and chunked bodies, Connection, Expect, Host and the
conditional-request headers) and refuses whatever could frame a request two ways: both
Content-Length and Transfer-Encoding, differing Content-Lengths, bare CR or LF, NUL or other
control characters, obsolete line folding, whitespace before a colon, chunk lines or trailer
fields outside RFC 9112's grammar. Refusals are ProtocolError with the HTTP status to send; the
connection is closed after it.

Work per byte is bounded while a request trickles in: no byte is searched twice for the end of
the head (parse_head's `scanned`), and ChunkedBody consumes what it has decoded, so every byte
of a chunked body is parsed once; the wire bytes of one chunked body are capped too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

MAX_HEADERS = 100
MAX_CHUNK_LINE = 1024  # bytes of one chunk-size line or trailer field line, CRLF excluded
MAX_TRAILERS = 8192

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
# Controls other than HTAB, CR and LF (CR and LF are checked separately): never in a head.
# Deleting them and comparing lengths is about three times faster than a regex search.
_CONTROLS = bytes(range(0x09)) + b"\x0b\x0c" + bytes(range(0x0E, 0x20)) + b"\x7f"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_EXT_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9112 §7.1.1: chunk-size [ chunk-ext ], with BWS around ";" and "=".
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,8})(?:[ \t]*;[ \t]*"
    + _EXT_TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + _EXT_TOKEN
    + rb"|"
    + _QUOTED
    + rb"))?)*"
)


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
    if b"#" in target:
        raise ProtocolError(400, "a request target has no fragment")
    if target[:1] != b"/":
        lowered = target[:8].lower()
        if lowered.startswith(b"http://"):
            start = 7
        elif lowered.startswith(b"https://"):
            start = 8
        else:
            raise ProtocolError(400, "request target must be a path or an absolute URL")
        # RFC 3986 §3.2: the authority ends at the first "/" or "?" ("#" is refused above).
        end = len(target)
        for delimiter in (b"/", b"?"):
            found = target.find(delimiter, start)
            if 0 <= found < end:
                end = found
        if end == start:
            raise ProtocolError(400, "an http URL needs a host")
        target = target[end:]
        if target[:1] != b"/":
            return "/"  # no path: the path is "/" and what follows is the query
    path = target.partition(b"?")[0]
    if b"%" in path:
        path = unquote_to_bytes(path)
    return path.decode("latin-1")


def parse_head(
    buffer: bytes | bytearray, start: int, max_head: int, scanned: int = 0
) -> RequestHead | None:
    """The request head at `start`, or None until the blank line that ends it has arrived.

    `scanned` is how many bytes from `start` an earlier call already searched without finding
    the end: they are not searched again.
    """
    resume = start + scanned - 3 if scanned > 3 else start
    end = buffer.find(b"\r\n\r\n", resume)
    if end < 0 and len(buffer) - start <= max_head:
        if buffer.find(b"\n\n", resume) >= 0 or buffer.find(b"\n\r\n", resume) >= 0:
            raise ProtocolError(400, "bare LF in the request head")
        return None
    if end < 0 or end - start > max_head:
        if buffer.find(b"\r\n", start, start + max_head) < 0:
            raise ProtocolError(414, "request line too long")
        raise ProtocolError(431, "request header section too large")
    head = buffer[start:end]
    if type(head) is not bytes:
        head = bytes(head)
    lines = head.split(b"\r\n")
    # A CR or LF anywhere but in a CRLF pair could frame the request differently elsewhere.
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
        raise ProtocolError(400, "bare CR or LF in the request head")
    if len(head.translate(None, _CONTROLS)) != len(head):
        raise ProtocolError(400, "control character in the request head")
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
        # field_line(), inlined: this loop runs for every header of every request.
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise ProtocolError(400, "malformed header field")
        value = value.strip(b" \t")
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
        elif name == b"expect" and version == b"HTTP/1.1":
            # RFC 9110 §10.1.1: an HTTP/1.0 request's expectation is ignored.
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


def field_line(line: bytes) -> tuple[bytes, bytes]:
    """(lower-case name, value without surrounding whitespace) of one RFC 9110 field line."""
    name, colon, raw_value = line.partition(b":")
    if not colon or _TOKEN.fullmatch(name) is None:
        raise ProtocolError(400, "malformed header field")
    # Control characters were refused for the whole head (or trailer line) at once.
    return name.lower(), raw_value.strip(b" \t")


def max_chunked_wire_bytes(limit: int) -> int:
    """The most bytes a chunked body of at most `limit` bytes may take on the wire: room for
    honest framing, not for a body sent one byte per chunk with long extensions."""
    return 2 * limit + 1024 + MAX_TRAILERS


@dataclass(slots=True)
class ChunkedBody:
    """Decodes one chunked body incrementally (RFC 9112 §7.1): feed() consumes what it has
    decoded, so a body sent in many small pieces is still parsed once."""

    limit: int
    wire_limit: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0  # decoded bytes so far
    wire: int = 0  # bytes consumed so far
    chunk_left: int = 0  # data bytes of the current chunk still to come
    crlf_left: int = 0  # bytes of the CRLF after the current chunk's data still to come
    in_trailers: bool = False
    trailer_bytes: int = 0
    done: bool = False

    @classmethod
    def for_limit(cls, limit: int) -> ChunkedBody:
        return cls(limit, max_chunked_wire_bytes(limit))

    def body(self) -> bytes:
        return b"".join(self.chunks)

    def feed(self, buffer: bytes | bytearray, position: int) -> int:
        """Decode from `position`; the offset up to which the buffer was consumed."""
        start = position
        try:
            while not self.done:
                if self.chunk_left:
                    take = min(self.chunk_left, len(buffer) - position)
                    if take <= 0:
                        break
                    self.chunks.append(bytes(buffer[position : position + take]))
                    position += take
                    self.chunk_left -= take
                    continue
                if self.crlf_left:
                    got = bytes(buffer[position : position + self.crlf_left])
                    if not got:
                        break
                    if got != b"\r\n"[2 - self.crlf_left :][: len(got)]:
                        raise ProtocolError(400, "chunk data not followed by CRLF")
                    position += len(got)
                    self.crlf_left -= len(got)
                    continue
                line_end = buffer.find(b"\r\n", position, position + MAX_CHUNK_LINE + 2)
                if line_end < 0:
                    if len(buffer) - position > MAX_CHUNK_LINE + 1:
                        raise ProtocolError(400, "chunk line too long")
                    break
                line = bytes(buffer[position:line_end])
                position = line_end + 2
                if self.in_trailers:
                    self._trailer(line)
                else:
                    self._chunk_size(line)
        finally:
            self.wire += position - start
        if self.wire > self.wire_limit:
            raise BodyTooLarge(-1)
        return position

    def _chunk_size(self, line: bytes) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError(400, "malformed chunk line")
        size = int(match.group(1), 16)
        if size == 0:
            self.in_trailers = True
            return
        self.size += size
        if self.size > self.limit:
            raise BodyTooLarge(-1)
        self.chunk_left = size
        self.crlf_left = 2

    def _trailer(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        self.trailer_bytes += len(line) + 2
        if self.trailer_bytes > MAX_TRAILERS:
            raise ProtocolError(431, "trailer section too large")
        if len(line.translate(None, _CONTROLS)) != len(line):
            raise ProtocolError(400, "control character in a trailer field")
        field_line(line)  # trailer fields are checked like header fields, then ignored


def read_body(buffer: bytes | bytearray, head: RequestHead, limit: int) -> tuple[bytes, int] | None:
    """(body, offset past it) once all of it has arrived, else None; BodyTooLarge over `limit`.

    For a whole message in one buffer; a connection reading a chunked body in pieces keeps a
    ChunkedBody instead.
    """
    start = head.end
    if head.content_length >= 0:
        if head.content_length > limit:
            raise BodyTooLarge(max(0, head.content_length - (len(buffer) - start)))
        end = start + head.content_length
        if len(buffer) < end:
            return None
        return bytes(buffer[start:end]), end
    chunked = ChunkedBody.for_limit(limit)
    end = chunked.feed(buffer, start)
    return (chunked.body(), end) if chunked.done else None
