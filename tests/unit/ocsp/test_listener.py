"""The listener's connection handling against a fake transport: its answers are the WSGI
endpoint's byte for byte, its response memo follows the responder's cache, requests are
answered in order, and bad or slow clients are refused and closed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.x509 import ocsp

from ca.revocation import revoke
from ocsp import http
from ocsp.listener import (
    BUSY_TIMEOUT,
    IDLE_TIMEOUT,
    LINGER,
    MEMO_KEY_BYTES,
    REQUEST_TIMEOUT,
    OCSPConnection,
    WorkerState,
    memo_key,
    serialize,
)
from ocsp.responder import POLL_INTERVAL, TRY_AGAIN
from tests.integration.test_ocsp_listener import parse_responses
from tests.support.clock import Clock
from tests.unit.ocsp.test_responder import get_path, issue, request_for, setup, verified


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.eof_sent = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_sent = True

    def get_extra_info(self, name: str) -> None:
        return None

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def listener(tmp_path, database_url, clock) -> Iterator[tuple]:
    core, client, responder, _ = setup(tmp_path, database_url, clock)
    state = WorkerState(responder, responder.settings, core.metrics)
    loop = asyncio.new_event_loop()
    state.loop = loop
    yield core, client, responder, state, loop
    state.pool.shutdown(wait=True)
    loop.close()
    core.close()


def watch(state: WorkerState) -> None:
    """What the worker's change-watch thread and its clock tick do."""
    state.responder.poll_if_due()
    state.tick()


def connect(state: WorkerState) -> tuple[OCSPConnection, FakeTransport]:
    connection = OCSPConnection(state)
    transport = FakeTransport()
    connection.connection_made(transport)
    return connection, transport


def settle(loop: asyncio.AbstractEventLoop, done: Callable[[], bool]) -> None:
    """Run the loop until the pool's answers are delivered (bounded)."""
    deadline = time.monotonic() + 20
    while not done() and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.005))
    assert done()


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


def post_request(body: bytes) -> bytes:
    length = str(len(body)).encode()
    return b"POST /ocsp HTTP/1.1\r\nHost: t\r\nContent-Length: " + length + b"\r\n\r\n" + body


def exchange(state, loop, data: bytes, count: int = 1) -> list[tuple[int, dict, bytes]]:
    connection, transport = connect(state)
    connection.data_received(data)
    settle(loop, lambda: not connection.busy and _complete(transport.written, count))
    return parse_responses(transport.take())


def _complete(data: bytes, count: int) -> bool:
    try:
        return len(parse_responses(bytes(data))) >= count
    except (AssertionError, ValueError, IndexError):
        return False


def counting_answers(monkeypatch, responder) -> list[bytes]:
    calls: list[bytes] = []
    original = responder.answer_and_key

    def answer_and_key(der: bytes):
        calls.append(der)
        return original(der)

    monkeypatch.setattr(responder, "answer_and_key", answer_and_key)
    return calls


def test_answers_match_the_wsgi_endpoint_byte_for_byte_from_the_memo(listener, monkeypatch):
    core, client, responder, state, loop = listener
    issued = issue(core)
    der = request_for(issued)
    references = [client.get(get_path(der)), client.post("/ocsp", data=der)]
    calls = counting_answers(monkeypatch, responder)
    for request, reference in zip((get(get_path(der)), post_request(der)), references, strict=True):
        first = exchange(state, loop, request)
        assert len(calls) == 1  # a miss
        second = state.second
        watch(state)  # the change watch has run: the memo may be used
        state.set_second(second)  # the same Date in both answers
        second = exchange(state, loop, request)
        assert len(calls) == 1  # answered from the memo
        calls.clear()
        assert first == second
        [(status, headers, body)] = second
        assert status == reference.status_code == 200
        assert body == reference.data
        verified(body, issued)
        expected = {name.lower(): value for name, value in reference.headers.items()}
        assert {k: v for k, v in headers.items() if k != "date"} == expected
    # The memo's bytes are what the shared renderer makes of the answer, plus Date.
    entry = next(iter(state.memo_get.values()))
    status, headers, body = http.render(entry.answer, 3600, now=float(state.second))
    assert state.memo_response(entry) == serialize(status, headers, body, state.date, close=False)


def test_memo_follows_the_responder_cache_and_needs_a_working_change_watch(
    listener, monkeypatch, clock
):
    core, _, responder, state, loop = listener
    issued = issue(core)
    request = get(get_path(request_for(issued)))
    exchange(state, loop, request)
    calls = counting_answers(monkeypatch, responder)
    watch(state)
    exchange(state, loop, request)
    assert calls == []

    revoke(core, issued.serial_hex, reason=1, actor="t", channel="cli")
    time.sleep(POLL_INTERVAL * 2)
    responder.poll_if_due()  # what the worker's change-watch thread does
    state.tick()
    [(status, _, body)] = exchange(state, loop, request)
    assert status == 200 and len(calls) == 1
    assert verified(body, issued).certificate_status == ocsp.OCSPCertStatus.REVOKED

    responder.last_poll_ok = 0.0  # the watch has been failing: no answer from memory
    state.tick()
    exchange(state, loop, request)
    assert len(calls) == 2


def test_memo_rebuilds_its_time_dependent_headers_each_second(listener):
    core, _, _, state, loop = listener
    request = get(get_path(request_for(issue(core))))
    exchange(state, loop, request)
    watch(state)
    [(_, before, body)] = exchange(state, loop, request)
    assert before["cache-control"].startswith("max-age=3600,")  # [frontends.ocsp] max_age
    state.set_second(state.second + 7)
    [(_, later, same_body)] = exchange(state, loop, request)
    assert same_body == body and later["date"] == state.date != before["date"]
    assert later["cache-control"] == before["cache-control"]
    entry = next(iter(state.memo_get.values()))
    state.set_second(int(entry.answer.next_update_ts) - 100)  # 100 s before nextUpdate
    [(_, after, same_body)] = exchange(state, loop, request)
    assert same_body == body and after["date"] == state.date
    assert after["cache-control"] == "max-age=100, public, no-transform, must-revalidate"
    status, headers, body = http.render(entry.answer, 3600, now=float(state.second))
    assert state.memo_response(entry) == serialize(status, headers, body, state.date, close=False)


def test_pipelined_requests_are_answered_in_order_across_misses(listener):
    core, _, _, state, loop = listener
    der = request_for(issue(core))
    nonce = request_for(issue(core, "b.example.test"), nonce=b"\x01" * 16)
    data = (
        get(get_path(der))
        + get("/ocsp/@@")
        + post_request(nonce)
        + b"PUT /ocsp HTTP/1.1\r\nHost: t\r\n\r\n"
        + get("/other")
        + get(get_path(der), b"Connection: close\r\n")
    )
    responses = exchange(state, loop, data, count=6)
    assert [status for status, _, _ in responses] == [200, 400, 200, 405, 404, 200]
    assert responses[0][2] == responses[5][2]
    assert responses[2][1]["cache-control"] == "no-store"  # a nonce: signed for this request
    assert responses[3][1]["allow"] == "GET, POST"
    assert responses[5][1]["connection"] == "close"


def test_conditional_and_head_requests(listener):
    core, _, _, state, loop = listener
    path = get_path(request_for(issue(core)))
    [(_, headers, body)] = exchange(state, loop, get(path))
    watch(state)
    etag = headers["etag"].encode()
    [(status, not_modified, empty)] = exchange(
        state, loop, get(path, b"If-None-Match: W/" + etag + b"\r\n")
    )
    assert status == 304 and empty == b"" and "content-length" not in not_modified
    connection, transport = connect(state)
    connection.data_received(get(path).replace(b"GET", b"HEAD", 1))
    settle(loop, lambda: b"\r\n\r\n" in transport.written)
    head, _, rest = transport.take().partition(b"\r\n\r\n")
    assert rest == b"" and f"Content-Length: {len(body)}".encode() in head


def test_expect_continue_and_a_body_in_pieces(listener):
    core, _, _, state, loop = listener
    der = request_for(issue(core))
    connection, transport = connect(state)
    head = post_request(der)[: -len(der)].replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    connection.data_received(head)
    assert transport.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    connection.data_received(der[:10])
    connection.data_received(der[10:])
    settle(loop, lambda: not connection.busy and _complete(transport.written, 1))
    assert parse_responses(transport.take())[0][0] == 200


def test_bad_requests_get_an_ocsp_error_and_a_lingering_close(listener):
    core, _, _, state, _ = listener
    errors = core.metrics.http_errors.labels(frontend="ocsp", type="malformedRequest")
    before = errors._value.get()
    connection, transport = connect(state)
    connection.data_received(b"POST /ocsp HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nxx")
    [(status, headers, body)] = parse_responses(transport.take())
    assert status == 400 and headers["connection"] == "close"
    assert ocsp.load_der_ocsp_response(body).response_status == (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    assert transport.eof_sent and not transport.closed  # still reading the rest of the body
    connection.data_received(b"x" * 50_000)
    assert not transport.closed and transport.written == b""
    connection.data_received(b"x" * 49_998)
    assert transport.closed
    assert errors._value.get() == before + 1

    connection, transport = connect(state)  # a client that never sends the rest
    connection.data_received(b"\x16\x03\x01 not http\r\n\r\n")
    assert parse_responses(transport.take())[0][0] == 400
    state.now += LINGER + 1
    state.sweep()
    assert transport.aborted


def test_slow_and_idle_clients_are_timed_out(listener):
    _, _, _, state, _ = listener
    slow, slow_transport = connect(state)
    slow.data_received(b"GET /ocsp/MFEw")
    idle, idle_transport = connect(state)
    state.now += REQUEST_TIMEOUT + 1
    state.sweep()
    [(status, _, _)] = parse_responses(slow_transport.take())
    assert status == 408
    assert not idle_transport.closed
    state.now += IDLE_TIMEOUT
    state.sweep()
    assert idle_transport.closed and idle_transport.written == b""
    assert idle not in state.connections


def test_a_half_closed_client_gets_its_answers_then_the_close(listener):
    core, _, _, state, loop = listener
    connection, transport = connect(state)
    connection.data_received(get(get_path(request_for(issue(core)))) + b"GET /ocsp/MF")
    connection.eof_received()
    settle(loop, lambda: transport.closed)
    assert [status for status, _, _ in parse_responses(transport.take())] == [200, 400]
    connection, transport = connect(state)
    connection.data_received(get("/ocsp/@@"))
    connection.eof_received()
    assert transport.closed
    assert [status for status, _, _ in parse_responses(transport.take())] == [400]


def test_only_single_certificate_answers_without_nonce_are_kept(listener):
    core, _, responder, _, _ = listener
    issued = issue(core)
    answer, key = responder.answer_and_key(request_for(issued))
    assert key is not None and responder.current(key) is answer
    answer, key = responder.answer_and_key(request_for(issued, nonce=b"\x02" * 8))
    assert key is None and not answer.cacheable
    answer, key = responder.answer_and_key(b"garbage")
    assert key is None and answer.http_status == 400


def test_the_listener_is_prepared_only_when_configured_and_its_port_is_free(tmp_path):
    from ca.config import load_config
    from ca.errors import ConfigError
    from ocsp.supervisor import prepare
    from tests.integration.server import free_port
    from tests.support.core_factory import write_config

    def config(extra: str):
        return load_config(write_config(tmp_path, "sqlite:///unused.db", extra=extra))

    assert prepare(config("")) is None
    port = free_port()
    listener = prepare(config(f'[frontends.ocsp]\nlisten = "127.0.0.1:{port}"\n'))
    assert listener is not None and listener.url == f"http://127.0.0.1:{port}/ocsp"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        with pytest.raises(ConfigError, match=r"frontends\.ocsp\.listen: cannot listen"):
            prepare(config(f'[frontends.ocsp]\nlisten = "127.0.0.1:{port}"\n'))
    for overlapping in ("127.0.0.1:8443", "0.0.0.0:8443", "[::]:8443"):
        with pytest.raises(ConfigError, match=r"must not overlap server\.listen"):
            prepare(config(f'[frontends.ocsp]\nlisten = "{overlapping}"\n'))


def test_overlapping_listen_addresses_are_those_sharing_a_port_and_a_host_or_a_wildcard():
    from ocsp.supervisor import WILDCARDS, overlaps

    any_ipv4 = WILDCARDS[1]
    assert overlaps(("127.0.0.1", 80), ("127.0.0.1", 80))
    assert overlaps((any_ipv4, 80), ("127.0.0.1", 80))
    assert overlaps(("10.0.0.1", 80), ("::", 80))
    assert not overlaps(("127.0.0.1", 80), ("127.0.0.2", 80))
    assert not overlaps((any_ipv4, 80), (any_ipv4, 81))


def test_worker_restarts_back_off_and_a_failed_start_is_tried_again(tmp_path, monkeypatch):
    from ca.config import load_config
    from ocsp import supervisor as supervision
    from ocsp.settings import ocsp_settings
    from tests.integration.server import free_port
    from tests.support.core_factory import write_config

    policy = supervision.RestartPolicy()
    policy.started(0, 100.0)
    delays = [policy.next_start(0, 101.0 + i) - (101.0 + i) for i in range(9)]
    assert delays[:3] == [supervision.RESTART_DELAY, 2 * supervision.RESTART_DELAY, 4.0]
    assert max(delays) == delays[-1] == supervision.MAX_RESTART_DELAY
    policy.started(0, 200.0)  # then it stays up long enough: the next delay is the first again
    assert policy.next_start(0, 200.0 + supervision.STABLE_AFTER) == (
        200.0 + supervision.STABLE_AFTER + supervision.RESTART_DELAY
    )

    extra = f'[frontends.ocsp]\nlisten = "127.0.0.1:{free_port()}"\n'
    config = load_config(write_config(tmp_path, "sqlite:///unused.db", extra=extra))
    running = supervision.Supervisor(config, ocsp_settings(config))
    running.due = {0: 0.0, 1: 0.0}

    def cannot_start(number: int) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(running, "_start", cannot_start)
    before = time.monotonic()
    running._start_due()  # raises nothing: the supervisor lives on and tries again later
    assert set(running.due) == {0, 1}
    assert all(at >= before + supervision.RESTART_DELAY for at in running.due.values())


def test_reading_stays_paused_while_the_client_leaves_its_answers_unread(listener):
    core, _, _, state, loop = listener
    path = get_path(request_for(issue(core)))
    connection, transport = connect(state)
    # Memo misses (a query string is never memoised), so each one goes to the pool.
    connection.data_received(b"".join(get(f"{path}?{i}") for i in range(3)))
    assert connection.busy and not transport.reading
    connection.pause_writing()  # the transport's buffer passed its high-water mark
    settle(loop, lambda: not connection.busy)
    assert not transport.reading  # the answer did not resume reading
    assert len(parse_responses(transport.take())) == 1
    # A transport that delivers anyway: beyond the bound, reading is paused again.
    transport.reading = True
    connection.data_received(b"x" * (state.max_buffer + 1))
    assert not transport.reading
    connection.resume_writing()
    settle(loop, lambda: bool(connection.draining))
    statuses = [status for status, _, _ in parse_responses(transport.take())]
    assert statuses == [200, 200, 414]  # the two pipelined requests, then the garbage


def test_a_chunked_body_arriving_in_pieces_is_consumed_as_it_arrives(listener):
    core, _, _, state, loop = listener
    der = request_for(issue(core))
    connection, transport = connect(state)
    connection.data_received(
        b"POST /ocsp HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for byte in der:
        connection.data_received(b"1;e=x\r\n")
        connection.data_received(bytes([byte]) + b"\r")
        connection.data_received(b"\n")
        assert len(connection.buffer) <= 2  # decoded, not kept to be parsed again
    connection.data_received(b"0\r\n\r\n")
    settle(loop, lambda: not connection.busy and _complete(transport.written, 1))
    assert parse_responses(transport.take())[0][0] == 200
    # One-byte chunks carrying long extensions: refused once the wire bytes pass the bound.
    connection, transport = connect(state)
    connection.data_received(
        b"POST /ocsp HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for _ in range(100):
        if connection.closing or connection.draining:
            break
        connection.data_received(b"1;" + b"x" * 1000 + b"\r\nA\r\n")
    assert [status for status, _, _ in parse_responses(transport.take())] == [400]


def test_only_short_origin_form_gets_and_posts_to_the_ocsp_path_are_memoised(listener):
    core, _, _, state, loop = listener
    der = request_for(issue(core))
    path = get_path(der)
    for target in (f"{path}?x", "http://h" + path, path + "%41" * 0 + "?" + "y" * 600):
        [(status, _, _)] = exchange(state, loop, get(target))
        assert status == 200
    assert state.memo_get == {}
    exchange(state, loop, get(path))
    assert list(state.memo_get) == [path.encode()]
    # A POST body answered at /ocsp is not answered from the memo at another path.
    watch(state)
    exchange(state, loop, post_request(der))
    assert list(state.memo_post) == [der]
    for other in (b"/ocsp/foo", b"/admin/api"):
        request = post_request(der).replace(b"/ocsp", other, 1)
        [(status, _, _)] = exchange(state, loop, request)
        assert status == 404
    head = type("Head", (), {"method": "POST", "path": "/ocsp", "target": b"/ocsp"})()
    assert memo_key(head, b"x" * MEMO_KEY_BYTES) is not None  # type: ignore[arg-type]
    assert memo_key(head, b"x" * (MEMO_KEY_BYTES + 1)) is None  # type: ignore[arg-type]


def test_requests_never_wait_for_the_change_watch_and_a_stuck_pool_answers_try_later(
    listener, monkeypatch
):
    core, _, responder, state, loop = listener
    issued = issue(core)
    path = get_path(request_for(issued))
    exchange(state, loop, get(path))
    watch(state)

    def slow_watch() -> None:
        raise AssertionError("a request ran the change watch")

    monkeypatch.setattr(responder, "_poll", slow_watch)
    time.sleep(POLL_INTERVAL * 2)  # the watch is due: still only the watch thread runs it
    state.memo_get.clear()  # a memo miss that the responder's cache answers
    [(status, _, _)] = exchange(state, loop, get(path))
    assert status == 200

    release = threading.Event()

    def stuck(der: bytes):
        release.wait(20)  # a database or token that does not answer
        return TRY_AGAIN, None

    monkeypatch.setattr(responder, "answer_and_key", stuck)
    connection, transport = connect(state)
    connection.data_received(get(path + "?stuck"))
    assert connection.busy
    state.now += BUSY_TIMEOUT + 1
    state.sweep()
    [(status, headers, body)] = parse_responses(transport.take())
    assert status == 503 and headers["connection"] == "close" and transport.closed
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.TRY_LATER
    release.set()
    assert state.stop_pool(20)  # what a stopping worker waits for before closing the core


def test_listener_processes_run_none_of_the_parents_handlers_and_are_signalled_safely():
    import os
    import signal

    from ca.processes import fork_child, start_listener_process

    class Sleeper:
        label = "test"

        def run(self) -> None:
            time.sleep(30)

    started: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: os._exit(3))  # the parent's handler
    try:
        pid = fork_child(Sleeper().run, "sleeper", started.append)
        assert started == [pid]  # recorded before the parent's handlers could run
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM

        process = start_listener_process(Sleeper())
        assert process.pidfd is not None
        os.kill(process.pid, signal.SIGKILL)
        os.waitpid(process.pid, 0)  # reaped by someone else (gunicorn does that)
        process.signal(signal.SIGTERM)  # through the pidfd: never a reused pid, no error
        assert process.reap()
        process.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
