"""The listener's connection handling against a fake transport: its answers are the WSGI
endpoint's byte for byte, its response memo follows the responder's cache, requests are
answered in order, and bad or slow clients are refused and closed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.x509 import ocsp

from ca.revocation import revoke
from ocsp import http
from ocsp.listener import (
    IDLE_TIMEOUT,
    LINGER,
    REQUEST_TIMEOUT,
    OCSPConnection,
    WorkerState,
    serialize,
)
from ocsp.responder import POLL_INTERVAL
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
        state.tick()  # the change watch has run (in the request): the memo may be used
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
    state.tick()
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
    state.tick()
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
    state.tick()
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
    with pytest.raises(ConfigError, match=r"must differ from server\.listen"):
        prepare(config('[frontends.ocsp]\nlisten = "127.0.0.1:8443"\n'))
