"""The dedicated OCSP listener: one asyncio (uvloop) HTTP/1.1 server per worker process.

Why it exists: behind gunicorn's threads and WSGI, answering a cached OCSP request costs about
ten times the responder's own work. Here a request is parsed by ocsp/http1.py and answered
from a per-process memo of complete HTTP responses (status line, headers and body), keyed by
the GET target or the POST body. A memo entry is served only while the responder's cache still
holds the very answer it was built from (so the responder's change watch, which drops answers
of certificates whose status changed, invalidates it too) and while that watch keeps
succeeding; its time-dependent headers (Date, Cache-Control max-age) are rebuilt at most once
a second. Everything else (misses, nonces, conditional and HEAD requests) goes through
ocsp/http.py like the WSGI endpoint; whatever may wait on the database or the token runs on a
small thread pool so that no connection stalls the loop.

Connections: keep-alive and pipelining (answers in order); a request must arrive whole within
REQUEST_TIMEOUT seconds and an idle connection is closed after IDLE_TIMEOUT; reading pauses
while a client does not read its answers or while an answer is being prepared.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from ocsp import http
from ocsp.http1 import BodyTooLarge, ProtocolError, RequestHead, parse_head, read_body
from ocsp.responder import MALFORMED, POLL_INTERVAL, Answer, Responder
from ocsp.settings import OCSPSettings

if TYPE_CHECKING:
    from ca.config import Config
    from ca.metrics import Metrics

log = logging.getLogger("privca.ocsp")

REQUEST_TIMEOUT = 10.0  # seconds for a request to arrive whole once it has started
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may wait for its next request
WRITE_TIMEOUT = 30.0  # seconds a client may leave its answers unread
WATCH_STALE = 2.0  # seconds without a successful change watch before the memo is bypassed
MAX_CONNECTIONS = 10_000  # per process
MAX_DRAIN = 1 << 20  # bytes of a refused request read and dropped so the client sees the answer
LINGER = 2.0  # seconds a refused connection is kept to drain the rest of its request
POOL_THREADS = 4
STOP_GRACE = 5.0  # seconds a stopping worker waits for answers in preparation
EXTRA_REASONS = {
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def max_head_bytes(settings: OCSPSettings) -> int:
    """Room for a GET path carrying the largest request, percent-encoded, plus headers."""
    return 3 * ((settings.max_request_bytes * 4) // 3 + 4) + 8192


def serialize(
    status: int, headers: list[tuple[str, str]], body: bytes, date: str, *, close: bool
) -> bytes:
    """An HTTP/1.1 response message (headers are already the final set, bar Date/Connection)."""
    reason = http.REASONS.get(status) or EXTRA_REASONS.get(status, "Error")
    lines = [f"HTTP/1.1 {status} {reason}\r\nDate: {date}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body


@dataclass(slots=True)
class MemoEntry:
    """The HTTP response for one request key, valid while `answer` is current: the status
    line and Date (the same for every 200) come from WorkerState, the rest is `tail`."""

    answer: Answer
    cache_key: bytes
    steady_until: float  # before this second, max-age is the configured maximum
    max_age: int = -1  # the max-age in `tail` (-1: not built yet)
    tail: bytes = b""


class WorkerState:
    """One process's listener: responder, response memo, clock, connections, thread pool."""

    def __init__(self, responder: Responder, settings: OCSPSettings, metrics: Metrics) -> None:
        self.responder = responder
        self.settings = settings
        self.metrics = metrics
        self.max_head = max_head_bytes(settings)
        self.memo_limit = settings.cache_entries  # per method, like the responder cache
        self.memo_get: dict[bytes, MemoEntry] = {}
        self.memo_post: dict[bytes, MemoEntry] = {}
        self.pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="ocsp-answer")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[OCSPConnection] = set()
        self.watch_ok = False
        self.now = time.monotonic()
        self.tick()

    def tick(self) -> None:
        """Advance the clock the hot path reads (called about once a second)."""
        self.now = time.monotonic()
        self.set_second(int(time.time()))
        self.watch_ok = self.now - self.responder.last_poll_ok < WATCH_STALE

    def set_second(self, second: int) -> None:
        self.second = second
        self.date = formatdate(second, usegmt=True)
        self.ok_prefix = f"HTTP/1.1 200 OK\r\nDate: {self.date}\r\n".encode()

    def memo_response(self, entry: MemoEntry) -> bytes:
        """The memo's response at this second: what http.render and serialize() make."""
        max_age = self.settings.max_age
        if self.second >= entry.steady_until:
            max_age = max(0, min(int(entry.answer.next_update_ts - self.second), max_age))
        if max_age != entry.max_age:
            status, headers, body = http.render(
                entry.answer, self.settings.max_age, now=float(self.second)
            )
            # Answers in the memo are cacheable, so 200: the response starts with ok_prefix.
            response = serialize(status, headers, body, self.date, close=False)
            entry.tail = response[len(self.ok_prefix) :]
            entry.max_age = max_age
        return self.ok_prefix + entry.tail

    def remember(self, method: str, request_key: bytes, answer: Answer, cache_key: bytes) -> None:
        memo = self.memo_post if method == "POST" else self.memo_get
        if len(memo) >= self.memo_limit:
            # Keys are the client's choice (many spellings of one request): stay bounded.
            for old in list(memo)[: max(1, len(memo) // 8)]:
                del memo[old]
        if self.memo_limit:
            steady_until = answer.next_update_ts - self.settings.max_age
            memo[request_key] = MemoEntry(answer, cache_key, steady_until)

    def call_in_loop(self, callback: Any, *args: Any) -> None:
        """Run `callback(*args)` on the loop from a pool thread (dropped once it is closed)."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # the worker is stopping: the connection goes with it

    def sweep(self) -> None:
        """Close connections past their deadline."""
        for connection in [c for c in self.connections if c.deadline < self.now]:
            connection.expire()

    def watch(self, stopping: threading.Event) -> None:
        """The change watch, off the loop: drop cached answers of changed certificates."""
        failures = 0
        while not stopping.wait(POLL_INTERVAL / 2):
            try:
                self.responder.poll_if_due()
                failures = 0
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    log.warning("OCSP change watch failed (%d): %s", failures, type(exc).__name__)


class OCSPConnection(asyncio.Protocol):
    """One client connection: parse, answer in order, keep alive."""

    __slots__ = (
        "buffer",
        "busy",
        "closing",
        "deadline",
        "draining",
        "eof",
        "head",
        "paused_writing",
        "sent_continue",
        "state",
        "transport",
    )

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.transport: Any = None
        self.buffer = b""
        self.head: RequestHead | None = None  # a head whose body is still arriving
        self.sent_continue = False
        self.busy = False  # an answer is being prepared on the pool
        self.paused_writing = False
        self.closing = False
        self.draining = 0  # bytes of a refused body still to read and drop
        self.eof = False
        self.deadline = state.now + IDLE_TIMEOUT

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if len(self.state.connections) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.state.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.state.connections.discard(self)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.draining:
            self.draining -= len(data)
            if self.draining <= 0:
                self.transport.close()
            return
        if self.buffer:
            self.buffer += data
        else:
            self.buffer = data
            self.deadline = self.state.now + REQUEST_TIMEOUT
        if not self.busy and not self.paused_writing:
            self.process()

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the answers to what it sent, and a 400 for a
        # request it left unfinished.
        self.eof = True
        if self.draining:
            self.close()
        elif not self.busy:
            self.finish()
        return True

    def finish(self) -> None:
        """The client sends no more: refuse what is left of a request, then close."""
        if self.buffer.strip(b"\r\n"):
            self.refuse(400)
        else:
            self.close()

    def pause_writing(self) -> None:
        self.paused_writing = True
        self.deadline = self.state.now + WRITE_TIMEOUT
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused_writing = False
        if not self.closing:
            self.transport.resume_reading()
            self.process()

    # -- requests -------------------------------------------------------------------------------

    def process(self) -> None:
        """Answer every complete request in the buffer, in order, until one must wait."""
        state = self.state
        buffer = self.buffer
        position = 0
        try:
            while position < len(buffer) and not (self.busy or self.closing or self.paused_writing):
                head = self.head
                if head is None:
                    if buffer.startswith(b"\r\n", position):
                        position += 2  # RFC 9112 §2.2: empty lines before a request
                        continue
                    head = parse_head(buffer, position, state.max_head)
                    if head is None:
                        break
                    self.head = head
                    self.sent_continue = False
                request = read_body(buffer, head, state.settings.max_request_bytes)
                if request is None:
                    if head.expect_continue and not self.sent_continue:
                        self.sent_continue = True
                        self.transport.write(CONTINUE)
                    break
                body, position = request
                self.head = None
                self.answer(head, body)
            if position:
                self.buffer = buffer[position:]
                if self.head is not None:
                    self.head.end -= position  # it was parsed at `position`
                if self.buffer:  # the start of the next request has arrived meanwhile
                    self.deadline = state.now + REQUEST_TIMEOUT
        except BodyTooLarge as exc:
            self.refuse(400, unread=exc.remaining)
        except ProtocolError as exc:
            self.refuse(exc.status)
        except Exception:
            log.exception("OCSP listener failed on a request")
            self.refuse(500)
        if self.closing or self.busy or self.draining:
            return
        if self.eof:
            self.finish()
        elif not self.buffer:
            self.deadline = state.now + IDLE_TIMEOUT

    def answer(self, head: RequestHead, body: bytes) -> None:
        state = self.state
        method = head.method
        if method == "GET" or method == "POST":
            request_key = head.target if method == "GET" else body
            memo = state.memo_get if method == "GET" else state.memo_post
            entry = memo.get(request_key)
            if (
                entry is not None
                and state.watch_ok
                and state.responder.current(entry.cache_key) is entry.answer
            ):
                if (
                    head.keep_alive
                    and head.if_none_match is None
                    and head.if_modified_since is None
                ):
                    self.transport.write(state.memo_response(entry))
                    return
                self.send(head, entry.answer, ())
                return
        if not http.is_ocsp_path(head.path):
            self.send(head, http.NOT_FOUND, ())
            return
        der = http.request_der(method, head.path, body, state.settings.max_request_bytes)
        if isinstance(der, http.Rejection):
            self.send(head, der.answer, der.extra_headers)
            return
        self.busy = True
        self.deadline = float("inf")  # the pool's work is bounded by database and token timeouts
        self.transport.pause_reading()
        future = state.pool.submit(
            http.answer_request,
            state.responder,
            method,
            head.path,
            body,
            state.settings.max_request_bytes,
        )
        future.add_done_callback(lambda done: state.call_in_loop(self.answered, head, body, done))

    def answered(self, head: RequestHead, body: bytes, done: Future[Any]) -> None:
        self.busy = False
        if self.closing:
            return
        try:
            answer, extra, cache_key = done.result()
        except Exception:  # answer_request does not raise; a cancelled future does
            answer, extra, cache_key = http.INTERNAL_ERROR, (), None
        if cache_key is not None and head.method in ("GET", "POST"):
            self.state.remember(
                head.method, head.target if head.method == "GET" else body, answer, cache_key
            )
        self.send(head, answer, extra)
        if self.closing:
            return
        self.transport.resume_reading()
        self.deadline = self.state.now + (REQUEST_TIMEOUT if self.buffer else IDLE_TIMEOUT)
        self.process()

    def send(self, head: RequestHead, answer: Answer, extra: tuple[tuple[str, str], ...]) -> None:
        state = self.state
        status, headers, payload = http.render(
            answer,
            state.settings.max_age,
            if_none_match=head.if_none_match,
            if_modified_since=head.if_modified_since,
            extra_headers=extra,
            now=float(state.second),
        )
        http.count_error(state.metrics, status)
        if head.method == "HEAD" or status == 304:
            payload = b""
        self.transport.write(
            serialize(status, headers, payload, state.date, close=not head.keep_alive)
        )
        if not head.keep_alive:
            self.close()

    def refuse(self, status: int, *, unread: int = -1) -> None:
        """Answer a request that cannot be read with an OCSP malformedRequest, then close.

        `unread` is how much of the request is known to be still on its way (-1: unknown).
        """
        if self.closing:
            return
        self.buffer = b""
        self.head = None
        http.count_error(self.state.metrics, status)
        der = http.INTERNAL_ERROR.der if status == 500 else MALFORMED.der
        headers = [
            ("Content-Type", http.CONTENT_TYPE),
            ("Content-Length", str(len(der))),
            ("Cache-Control", "no-store"),
        ]
        self.transport.write(serialize(status, headers, der, self.state.date, close=True))
        if self.eof or unread == 0:
            self.close()
            return
        # Lingering close: closing with unread data makes the kernel reset the connection and
        # the client would likely lose the answer. Send FIN, then read and drop what still
        # comes (bounded in bytes and time) until the client closes.
        self.draining = min(unread, MAX_DRAIN) if unread > 0 else MAX_DRAIN
        self.deadline = self.state.now + LINGER
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def expire(self) -> None:
        if self.paused_writing or self.draining:
            self.abort()
        elif self.buffer:
            self.refuse(408)
        else:
            self.close()

    def abort(self) -> None:
        self.closing = True
        self.state.connections.discard(self)
        self.transport.abort()

    def close(self) -> None:
        self.closing = True
        self.state.connections.discard(self)
        self.transport.close()


def run_worker(config: Config, settings: OCSPSettings, sock: socket.socket) -> None:
    """A listener worker process's life: its own core (token, database), then serve `sock`
    until SIGTERM or SIGINT, then stop within STOP_GRACE seconds."""
    import uvloop

    from ca.core import CACore

    core = CACore.from_config(config)
    responder = Responder(core, settings)
    responder.issuer_index()  # the issuers and their CertID hashes, before the first request
    # What exists now lives as long as the process: keep it out of the collector's full
    # passes, which would otherwise walk it and pause every connection meanwhile.
    gc.freeze()
    state = WorkerState(responder, settings, core.metrics)
    stopping = threading.Event()
    watcher = threading.Thread(
        target=state.watch, args=(stopping,), name="ocsp-change-watch", daemon=True
    )
    watcher.start()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(loop, state, sock))
    finally:
        stopping.set()
        state.pool.shutdown(wait=False, cancel_futures=True)
        loop.close()
        core.close()


async def _serve(loop: asyncio.AbstractEventLoop, state: WorkerState, sock: socket.socket) -> None:
    state.loop = loop
    server = await loop.create_server(lambda: OCSPConnection(state), sock=sock, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def tick() -> None:
        state.tick()
        state.sweep()
        loop.call_later(1.0 - (time.time() % 1.0) + 0.001, tick)

    tick()
    await stop.wait()
    server.close()
    for connection in list(state.connections):
        if not connection.busy:
            connection.close()
    deadline = time.monotonic() + STOP_GRACE
    while any(c.busy for c in state.connections) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for connection in list(state.connections):
        connection.transport.abort()
