"""The dedicated OCSP listener through a real `privca serve` ([frontends.ocsp] listen): openssl
ocsp POST with and without a nonce, curl GET, good/revoked/unknown, revocation within a second,
keep-alive and pipelining, bad input answered with 4xx by workers that keep serving, and a
clean stop that leaves no process behind."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from tests.integration.server import RunningServer, free_port, start_server
from tests.integration.test_ocsp_e2e import issue, run
from tests.support.pki_lint import assert_lints_clean_ocsp_response

pytestmark = pytest.mark.integration


@pytest.fixture
def listener(tmp_path: Path, database_url: str) -> Iterator[tuple[RunningServer, int]]:
    port = free_port()
    running = start_server(
        tmp_path,
        database_url,
        extra=f'[frontends.ocsp]\nlisten = "127.0.0.1:{port}"\nlisten_processes = 2\n',
    )
    _wait_listening(port)
    yield running, port
    running.stop()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the OCSP listener on port {port} did not start")


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream into HTTP responses (Content-Length framed, as the listener sends)."""
    responses = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, data
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        responses.append((status, headers, rest[:length]))
        data = rest[length:]
    return responses


def exchange(port: int, payload: bytes, *, expect: int, timeout: float = 20) -> bytes:
    """Send `payload` on one connection and read until `expect` responses or the close."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            try:
                if len(parse_responses(received)) >= expect:
                    break
            except (AssertionError, ValueError, IndexError):
                continue  # a response still arriving
    return received


def get_request(path: str, *, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}\r\n".encode()


def post_request(body: bytes) -> bytes:
    return (
        b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def ocsp_status(body: bytes) -> ocsp.OCSPResponseStatus:
    return ocsp.load_der_ocsp_response(body).response_status


def test_listener_answers_openssl_and_curl_and_sees_revocations_within_a_second(
    listener: tuple[RunningServer, int], tmp_path: Path
):
    server, port = listener
    url = f"http://127.0.0.1:{port}/ocsp"
    leaf, issuer, bundle, _ = issue(server, tmp_path, "good.example.test")
    revoked_leaf, _, _, revoked_serial = issue(server, tmp_path, "bad.example.test")
    response_file = tmp_path / "response.der"

    # openssl POST with a nonce (echoed, so signed fresh) and without one (pre-signed).
    for nonce in ((), ("-no_nonce",)):
        checked = run(
            "openssl", "ocsp", "-url", url, "-timeout", "20", "-issuer", str(issuer),
            "-cert", str(leaf), "-CAfile", str(bundle), "-respout", str(response_file), *nonce,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
        assert "Response verify OK" in checked.stderr and f"{leaf}: good" in checked.stdout
        assert "WARNING" not in checked.stderr
        assert_lints_clean_ocsp_response(response_file.read_bytes())

    # curl GET, the RFC 5019 path, for good, unknown and (below) revoked, with cache headers.
    def curl_get(*target: str) -> ocsp.OCSPResponse:
        request = tmp_path / "request.der"
        made = run("openssl", "ocsp", "-issuer", str(issuer), *target, "-no_nonce",
                   "-reqout", str(request))  # fmt: skip
        assert made.returncode == 0, made.stderr
        path = urllib.parse.quote(base64.b64encode(request.read_bytes()).decode(), safe="")
        headers = tmp_path / "headers.txt"
        fetched = run("curl", "-sS", "--fail", "-D", str(headers), "-o", str(response_file),
                      f"{url}/{path}")  # fmt: skip
        assert fetched.returncode == 0, fetched.stderr
        text = headers.read_text().lower()
        assert "content-type: application/ocsp-response" in text and "etag:" in text
        assert "public, no-transform, must-revalidate" in text and "date:" in text
        der = response_file.read_bytes()
        assert_lints_clean_ocsp_response(der)
        verified = run("openssl", "ocsp", "-respin", str(response_file), "-issuer", str(issuer),
                       *target, "-CAfile", str(bundle), "-no_nonce")  # fmt: skip
        assert "Response verify OK" in verified.stderr, verified.stderr
        return ocsp.load_der_ocsp_response(der)

    assert curl_get("-cert", str(leaf)).certificate_status == ocsp.OCSPCertStatus.GOOD
    unknown = curl_get("-serial", "0x1234567")
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    # Several connections, so both workers hold the good answer in memory before the revocation.
    for _ in range(8):
        status = curl_get("-cert", str(revoked_leaf)).certificate_status
        assert status == ocsp.OCSPCertStatus.GOOD

    server.cli("revoke", format(revoked_serial, "x"), "--reason", "keyCompromise")
    time.sleep(1.0)
    for _ in range(8):
        revoked = curl_get("-cert", str(revoked_leaf))
        assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
    by_openssl = run(
        "openssl", "ocsp", "-url", url, "-timeout", "20", "-issuer", str(issuer),
        "-cert", str(revoked_leaf), "-CAfile", str(bundle), "-no_nonce",
    )  # fmt: skip
    assert f"{revoked_leaf}: revoked" in by_openssl.stdout, by_openssl.stderr
    assert "Reason: keyCompromise" in by_openssl.stdout

    # Keep-alive and pipelining: several requests on one connection, answered in order.
    request = tmp_path / "request.der"
    run("openssl", "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-no_nonce",
        "-reqout", str(request))  # fmt: skip
    der = request.read_bytes()
    path = "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    pipelined = get_request(path) + post_request(der) + get_request("/ocsp/@@") + get_request(path)
    responses = parse_responses(exchange(port, pipelined, expect=4))
    assert [status for status, _, _ in responses] == [200, 200, 400, 200]
    assert responses[0][2] == responses[1][2] == responses[3][2]
    assert ocsp_status(responses[2][2]) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for _ in range(3):  # one at a time on the same connection
            sock.sendall(get_request(path))
            received = b""
            while not received.endswith(responses[0][2]):
                chunk = sock.recv(65536)
                assert chunk, "the listener closed a keep-alive connection"
                received += chunk
            assert parse_responses(received)[0][0] == 200

    # Conditional GET: the ETag gets 304 without a body.
    etag = responses[0][1]["etag"]
    conditional = f"GET {path} HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n".encode()
    [(status, headers, body)] = parse_responses(exchange(port, conditional, expect=1))
    assert status == 304 and body == b"" and "max-age=" in headers["cache-control"]
    assert "Traceback" not in server.log()


BAD_INPUT = [
    # (request bytes, expected status)
    (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\ngarbage", 400),
    (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n\x30\x03\x02\x01\x00", 400),
    (b"GET /ocsp/not-base64-@@ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"\x30" * 100000, 400),
    (b"GET /ocsp/" + b"A" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /ocsp/x HTTP/1.1\r\n" + b"X-Flood: 1\r\n" * 200 + b"Host: x\r\n\r\n", 431),
    (b"DELETE /ocsp HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"this is not http\r\n\r\n", 400),
    (b"GET /ocsp/x HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET /ocsp/x HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /ocsp/x#y HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /ocsp/x HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    # A chunk extension or trailer that another parser could read as a second request.
    (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1;a\nGET /smuggled HTTP/1.1\r\nA\r\n0\r\n\r\n", 400),
    (b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1\r\nA\r\n0\r\nX\nGET /smuggled HTTP/1.1\r\n\r\n", 400),
]  # fmt: skip


def test_listener_refuses_bad_input_with_4xx_and_keeps_serving(
    listener: tuple[RunningServer, int], tmp_path: Path
):
    server, port = listener
    leaf, issuer, _, _ = issue(server, tmp_path, "good.example.test")
    request = tmp_path / "request.der"
    run("openssl", "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-no_nonce",
        "-reqout", str(request))  # fmt: skip
    good = post_request(request.read_bytes())

    for payload, expected in BAD_INPUT:
        [(status, headers, body)] = parse_responses(exchange(port, payload, expect=1))
        assert status == expected, payload[:80]
        assert headers["content-type"] == "application/ocsp-response"
        assert ocsp_status(body) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        if expected == 405:
            assert headers["allow"] == "GET, POST"

    # Partial requests, then the client stops sending: a 400 and the close; or it goes away.
    for partial in (
        b"GET /ocsp/MFE",
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 90\r\n\r\n0",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(partial)
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            [(status, _, body)] = parse_responses(received)
            assert status == 400
            assert ocsp_status(body) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(partial)
    # A partial request left open does not keep the other clients waiting.
    with socket.create_connection(("127.0.0.1", port), timeout=20) as idle:
        idle.sendall(b"GET /ocsp/MFE")
        for _ in range(4):  # new connections, so both workers answer some
            [(status, _, body)] = parse_responses(exchange(port, good, expect=1))
            assert status == 200 and ocsp_status(body) == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert_lints_clean_ocsp_response(body)
    # Chunked POST bodies and Expect: 100-continue (curl's way for larger bodies) work.
    der = request.read_bytes()
    chunked = (
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + format(len(der) - 5, "x").encode() + b"\r\n" + der[:-5] + b"\r\n"
        + b"5;ext=1\r\n" + der[-5:] + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    [(status, _, body)] = parse_responses(exchange(port, chunked, expect=1))
    assert status == 200 and ocsp_status(body) == ocsp.OCSPResponseStatus.SUCCESSFUL
    posted = run(
        "curl", "-sS", "--fail", "-H", "Expect: 100-continue", "-H",
        "Content-Type: application/ocsp-request", "--data-binary", f"@{request}",
        "-o", str(tmp_path / "posted.der"), f"http://127.0.0.1:{port}/ocsp",
    )  # fmt: skip
    assert posted.returncode == 0, posted.stderr
    assert (tmp_path / "posted.der").read_bytes() == body
    assert "Traceback" not in server.log()

    # A worker that dies is replaced, and the listener answers meanwhile and after.
    [supervisor] = [pid for pid in _children(server.process.pid) if _children(pid)]
    workers = _children(supervisor)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        replaced = [pid for pid in _children(supervisor) if _alive(pid)]
        if len(replaced) == 2 and workers[0] not in replaced:
            break
        time.sleep(0.1)
    assert len(replaced) == 2 and workers[0] not in replaced and workers[1] in replaced
    for _ in range(4):
        [(status, _, body)] = parse_responses(exchange(port, good, expect=1))
        assert status == 200 and ocsp_status(body) == ocsp.OCSPResponseStatus.SUCCESSFUL

    # `privca serve` stops every listener process with it.
    children = _descendants(server.process.pid)
    assert len(children) >= 5  # 2 gunicorn workers, the supervisor and its 2 workers
    server.stop()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _children(pid: int) -> list[int]:
    listed = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(line) for line in listed.split()]


def _descendants(pid: int) -> list[int]:
    listed = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True
    ).stdout
    parents: dict[int, list[int]] = {}
    for line in listed.splitlines():
        child, parent = (int(n) for n in line.split())
        parents.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose: it runs nothing and holds no socket.
    state = Path(f"/proc/{pid}/stat")
    return state.exists() and state.read_text().split(") ")[-1][:1] != "Z"
