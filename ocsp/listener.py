"""The dedicated OCSP listener: one asyncio (uvloop) HTTP/1.1 server per worker process.

Why it exists: behind gunicorn's threads and WSGI, answering a cached OCSP request costs about
ten times the responder's own work. Here a request is parsed by ocsp/http1.py and answered
from a per-process memo of complete HTTP responses (status line, headers and body), keyed by
the GET target or the POST body. A memo entry is served only while the responder's cache still
holds the very answer it was built from (so the responder's change watch, which drops answers
of certificates whose status changed, invalidates it too) and while that watch keeps
succeeding; its time-dependent headers (Date, Cache-Control max-age) are rebuilt at most once
a second. Everything else (misses, nonces, If-None-Match and HEAD requests) goes through
ocsp/http.py like the WSGI endpoint; whatever may wait on the database or the token runs on a
small thread pool so that no connection stalls the loop, and only the watch thread runs the
change watch, so no request waits for it.

Connections: keep-alive and pipelining (answers in order); a request must arrive whole within
REQUEST_TIMEOUT seconds, an answer that takes the pool longer than BUSY_TIMEOUT becomes
tryLater (503), and an idle connection is closed after IDLE_TIMEOUT; reading pauses while a
client does not read its answers or while an answer is being prepared, and what a connection
buffers is bounded (max_buffer_bytes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
from ocsp.http1 import (
    BodyTooLarge,
    ChunkedBody,
    ProtocolError,
    RequestHead,
    max_chunked_wire_bytes,
    parse_head,
)
from ocsp.responder import MALFORMED, POLL_INTERVAL, TRY_AGAIN, Answer, Responder, oldest_eighth
from ocsp.settings import OCSPSettings

if TYPE_CHECKING:
    from ca.config import Config
    from ca.metrics import Metrics

log = logging.getLogger("privca.ocsp")

REQUEST_TIMEOUT = 10.0  # seconds for a request to arrive whole once it has started
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may wait for its next request
WRITE_TIMEOUT = 30.0  # seconds a client may leave its answers unread
BUSY_TIMEOUT = 5.0  # seconds an answer may take on the pool before the client gets tryLater
MAX_CONNECTIONS = 10_000  # per process
MAX_DRAIN = 1 << 20  # bytes of a refused request read and dropped so the client sees the answer
LINGER = 2.0  # seconds a refused connection is kept to drain the rest of its request
POOL_THREADS = 4
STOP_GRACE = 5.0  # seconds a stopping worker waits for answers in preparation
MEMO_KEY_BYTES = 512  # longer GET targets and POST bodies are answered but not memoised
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
POST_PATHS = http.POST_PATHS


def max_head_bytes(settings: OCSPSettings) -> int:
    """Room for a GET path carrying the largest request, percent-encoded, plus headers."""
    return 3 * ((settings.max_request_bytes * 4) // 3 + 4) + 8192


def max_buffer_bytes(settings: OCSPSettings) -> int:
    """The most a connection buffers: one request's head and body plus one read's worth."""
    return (
        max_head_bytes(settings)
        + max_chunked_wire_bytes(settings.max_request_bytes)
        + (256 << 10)  # uvloop reads up to 256 KiB at a time
    )


def memo_key(head: RequestHead, body: bytes) -> bytes | None:
    """The memo key of a request, None if it is not to be memoised.

    Only short origin-form GET targets without a query and short POST bodies to the POST path:
    keys are the client's choice, and every other spelling of a request would be one more
    entry of up to the whole head.
    """
    if head.method == "GET":
        target = head.target
        if len(target) <= MEMO_KEY_BYTES and target[:1] == b"/" and b"?" not in target:
            return target
    elif head.method == "POST" and len(body) <= MEMO_KEY_BYTES and head.path in POST_PATHS:
        return body
    return None


def serialize(
    status: int, headers: list[tuple[str, str]], body: bytes, date: str, *, close: bool
) -> bytes:
    """An HTTP/1.1 response message (headers are already the final set, bar Date/Connection)."""
    reason = http.REASONS.get(status, "Error")
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
        # The watch thread runs the change watch: a slow database must not hold requests.
        responder.polls_in_requests = False
        self.settings = settings
        self.metrics = metrics
        self.max_head = max_head_bytes(settings)
        self.max_buffer = max_buffer_bytes(settings)
        self.memo_limit = settings.cache_entries  # per method, like the responder cache
        self.memo_get: dict[bytes, MemoEntry] = {}
        self.memo_post: dict[bytes, MemoEntry] = {}
        self.pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="ocsp-answer")
        self.in_flight: set[Future[Any]] = set()  # work on the pool, waited for at stop
        self.loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[OCSPConnection] = set()
        self.watch_ok = False
        self.now = time.monotonic()
        self.tick()

    def tick(self) -> None:
        """Advance the clock the hot path reads (called about once a second)."""
        self.now = time.monotonic()
        self.set_second(int(time.time()))
        self.watch_ok = self.responder.watch_fresh(self.now)

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
            for old in oldest_eighth(memo):
                del memo[old]
        if self.memo_limit:
            steady_until = answer.next_update_ts - self.settings.max_age
            memo[request_key] = MemoEntry(answer, cache_key, steady_until)

    def submit(self, work: Any, *args: Any) -> Future[Any]:
        """Run `work(*args)` on the pool; the connection's answered() takes it off in_flight
        (on the loop, so that the set is only ever touched there)."""
        future = self.pool.submit(work, *args)
        self.in_flight.add(future)
        return future

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
        """The change watch, off the loop: drop cached answers of changed certificates.

        A failure is logged by the responder; after `watch_stale` seconds of them nothing is
        served from memory (see ocsp/responder.py).
        """
        while True:
            self.responder.watch_changes()
            if stopping.wait(POLL_INTERVAL / 2):
                return

    def stop_pool(self, grace: float) -> bool:
        """Cancel queued work and wait up to `grace` seconds for running work; True if none is
        left (only then may the core, and with it the token, be closed). Called once the loop
        has stopped."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        # A cancelled future never runs, and never counts as done for wait().
        started = [future for future in self.in_flight if not future.cancelled()]
        _, running = concurrent.futures.wait(started, timeout=grace)
        return not running


class OCSPConnection(asyncio.Protocol):
    """One client connection: parse, answer in order, keep alive."""

    __slots__ = (
        "buffer",
        "busy",
        "busy_head",
        "chunked",
        "closing",
        "deadline",
        "draining",
        "eof",
        "future",
        "head",
        "in_request",
        "paused_writing",
        "scanned",
        "sent_continue",
        "state",
        "transport",
    )

    def __init__(self, state: WorkerState) -> None:
        self.state = state
        self.transport: Any = None
        # bytes as received while it holds one read; a bytearray once reads accumulate.
        self.buffer: bytes | bytearray = b""
        self.scanned = 0  # bytes at the buffer's start already searched for the head's end
        self.head: RequestHead | None = None  # a head whose body is still arriving
        self.chunked: ChunkedBody | None = None  # that body's decoder, if it is chunked
        self.in_request = False  # a request has started and is not answered yet
        self.sent_continue = False
        self.busy = False  # an answer is being prepared on the pool
        self.future: Future[Any] | None = None  # the pool's work for busy_head
        self.busy_head: RequestHead | None = None
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
        if self.future is not None:
            self.future.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.draining:
            self.draining -= len(data)
            if self.draining <= 0:
                self.close()
            return
        buffer = self.buffer
        if not buffer:
            self.buffer = data  # the common case, one read holding whole requests: no copy
        else:
            if type(buffer) is bytes:
                buffer = self.buffer = bytearray(buffer)
            buffer += data  # type: ignore[operator]
        if not self.busy and not self.paused_writing:
            self.process()
        elif len(self.buffer) > self.state.max_buffer:
            # Reading is already paused then; a transport that still delivers must not make
            # the connection hold without bound what nobody is parsing.
            self.transport.pause_reading()

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
        if self.head is not None or self.buffer.strip(b"\r\n"):
            self.refuse(400)
        else:
            self.close()

    def pause_writing(self) -> None:
        self.paused_writing = True
        self.deadline = self.state.now + WRITE_TIMEOUT
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.closing or self.busy:
            return  # answered() resumes reading when the pool is done
        self.deadline = self.state.now + (REQUEST_TIMEOUT if self.in_request else IDLE_TIMEOUT)
        self.transport.resume_reading()
        self.process()

    # -- requests -------------------------------------------------------------------------------

    def process(self) -> None:
        """Answer every complete request in the buffer, in order, until one must wait."""
        state = self.state
        buffer = self.buffer
        limit = state.settings.max_request_bytes
        position = 0
        answered = False
        try:
            while not (self.busy or self.closing or self.paused_writing):
                head = self.head
                if head is None:
                    if position >= len(buffer):
                        break
                    if buffer.startswith(b"\r\n", position):
                        position += 2  # RFC 9112 §2.2: empty lines before a request
                        continue
                    head = parse_head(buffer, position, state.max_head, self.scanned)
                    if head is None:
                        self.scanned = len(buffer) - position
                        break
                    self.scanned = 0
                    self.head = head
                    self.sent_continue = False
                    position = head.end
                    if head.content_length < 0:
                        self.chunked = ChunkedBody.for_limit(limit)
                if self.chunked is not None:
                    position = self.chunked.feed(buffer, position)
                    if not self.chunked.done:
                        self.await_body(head)
                        break
                    body = self.chunked.body()
                    self.chunked = None
                else:
                    length = head.content_length
                    if length > limit:
                        raise BodyTooLarge(max(0, length - (len(buffer) - position)))
                    if len(buffer) - position < length:
                        self.await_body(head)
                        break
                    body = buffer[position : position + length]
                    if type(body) is not bytes:
                        body = bytes(body)
                    position += length
                self.head = None
                self.in_request = False
                answered = True
                self.answer(head, body)
            if not (self.busy or self.closing or self.paused_writing):
                # The deadlines answer() has not set: idle after an answer, or a request that
                # has started to arrive (its clock does not restart with each piece).
                if self.head is not None or position < len(buffer):
                    if not self.in_request:
                        self.in_request = True
                        self.deadline = state.now + REQUEST_TIMEOUT
                elif answered:
                    self.deadline = state.now + IDLE_TIMEOUT
            if position:
                # Only now: answer() may have closed the connection but not touched the buffer.
                if position >= len(buffer):
                    self.buffer = b""
                elif type(buffer) is bytearray:
                    del buffer[:position]
                else:
                    self.buffer = buffer[position:]
        except BodyTooLarge as exc:
            self.refuse(400, unread=exc.remaining)
        except ProtocolError as exc:
            self.refuse(exc.status)
        except Exception:
            log.exception("OCSP listener failed on a request")
            self.refuse(500)
        if self.eof and not (self.closing or self.busy or self.draining):
            self.finish()

    def await_body(self, head: RequestHead) -> None:
        if head.expect_continue and not self.sent_continue:
            self.sent_continue = True
            self.transport.write(CONTINUE)

    def answer(self, head: RequestHead, body: bytes) -> None:
        state = self.state
        method = head.method
        if method == "GET" or method == "POST":
            if method == "GET":
                entry = state.memo_get.get(head.target)
            elif head.path in POST_PATHS:
                entry = state.memo_post.get(body)
            else:
                entry = None
            if (
                entry is not None
                and state.watch_ok
                and state.responder.current(entry.cache_key) is entry.answer
            ):
                if head.keep_alive and head.if_none_match is None:
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
        self.deadline = state.now + BUSY_TIMEOUT
        self.transport.pause_reading()
        future = state.submit(
            http.answer_request,
            state.responder,
            method,
            head.path,
            body,
            state.settings.max_request_bytes,
        )
        self.future = future
        self.busy_head = head
        future.add_done_callback(lambda done: state.call_in_loop(self.answered, head, body, done))

    def answered(self, head: RequestHead, body: bytes, done: Future[Any]) -> None:
        self.state.in_flight.discard(done)
        if done is not self.future or self.closing:
            return  # given up on (tryLater sent) or the connection is gone
        self.busy = False
        self.future = self.busy_head = None
        try:
            answer, extra, cache_key = done.result()
        except Exception:  # answer_request does not raise
            answer, extra, cache_key = http.INTERNAL_ERROR, (), None
        if cache_key is not None:
            request_key = memo_key(head, body)
            if request_key is not None:
                self.state.remember(head.method, request_key, answer, cache_key)
        self.send(head, answer, extra)
        if self.closing or self.paused_writing:
            return  # resume_writing() carries on
        self.deadline = self.state.now + IDLE_TIMEOUT
        self.transport.resume_reading()
        self.process()

    def send(
        self,
        head: RequestHead,
        answer: Answer,
        extra: tuple[tuple[str, str], ...],
        *,
        close: bool = False,
    ) -> None:
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
        close = close or not head.keep_alive
        self.transport.write(serialize(status, headers, payload, state.date, close=close))
        if close:
            self.close()

    def refuse(self, status: int, *, unread: int = -1) -> None:
        """Answer a request that cannot be read with an OCSP malformedRequest, then close.

        `unread` is how much of the request is known to be still on its way (-1: unknown).
        """
        if self.closing:
            return
        self.buffer = b""
        self.head = None
        self.chunked = None
        self.in_request = False
        http.count_error(self.state.metrics, status)
        _, headers, der = http.render(http.INTERNAL_ERROR if status == 500 else MALFORMED, 0)
        self.transport.write(serialize(status, headers, der, self.state.date, close=True))
        if self.eof or unread == 0:
            self.close()
            return
        # Lingering close: closing with unread data makes the kernel reset the connection and
        # the client would likely lose the answer. Send FIN, then read and drop what still
        # comes (bounded in bytes and time) until the client closes.
        self.draining = min(unread, MAX_DRAIN) if unread > 0 else MAX_DRAIN
        self.deadline = self.state.now + LINGER
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def give_up(self) -> None:
        """The pool has not answered within BUSY_TIMEOUT (database or token too slow):
        tryLater, and close, since the answers to any pipelined requests would come late."""
        self.busy = False
        if self.future is not None:
            self.future.cancel()  # still queued if every pool thread is waiting too
            self.future = None
        if self.busy_head is not None:
            self.send(self.busy_head, TRY_AGAIN, (), close=True)
        else:
            self.close()

    def expire(self) -> None:
        if self.paused_writing or self.draining:
            self.abort()
        elif self.busy:
            self.give_up()
        elif self.in_request or self.buffer:
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
    # passes, which would otherwise walk it and pause every connection meanwhile. Collected
    # first, so that start-up garbage is freed rather than frozen for good.
    gc.collect()
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
        idle = state.stop_pool(STOP_GRACE)
        loop.close()
        if idle:
            core.close()
        else:
            # Closing the token under a thread that still signs can crash the module; the
            # process exits next and the kernel releases what the core holds.
            log.warning("OCSP listener worker stopped with answers still being prepared")


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
