"""The listener's HTTP/1.1 request parser: framing, limits and refusals (RFC 9112)."""

from __future__ import annotations

import pytest

from ocsp.http1 import BodyTooLarge, ProtocolError, parse_head, read_body, request_path

MAX_HEAD = 4096


def parse(data: bytes, limit: int = 8192) -> tuple[object, bytes, int]:
    head = parse_head(data, 0, MAX_HEAD)
    assert head is not None
    body = read_body(data, head, limit)
    assert body is not None
    return head, body[0], body[1]


def test_get_with_percent_encoded_base64_path_and_query():
    data = b'GET /ocsp/MFEw%2BTz%3D?x=1 HTTP/1.1\r\nHost: a\r\nIf-None-Match: "e"\r\n\r\n'
    head, body, end = parse(data)
    assert head.method == "GET" and head.path == "/ocsp/MFEw+Tz=" and head.keep_alive
    assert head.target == b"/ocsp/MFEw%2BTz%3D?x=1"
    assert head.if_none_match == '"e"' and head.if_modified_since is None
    assert body == b"" and end == len(data)


def test_absolute_form_target_gives_its_path():
    assert request_path(b"http://ocsp.example:8080/ocsp/AB") == "/ocsp/AB"
    assert request_path(b"HTTPS://ocsp.example") == "/"
    with pytest.raises(ProtocolError):
        request_path(b"ocsp.example:80")


def test_pipelined_requests_parse_from_their_offsets():
    first = b"POST /ocsp HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    second = b"GET /ocsp/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    data = first + second
    head = parse_head(data, 0, MAX_HEAD)
    body, end = read_body(data, head, 100)
    assert (head.method, body, end) == ("POST", b"abc", len(first))
    head = parse_head(data, end, MAX_HEAD)
    assert head.method == "GET" and not head.keep_alive and head.end == len(data)


def test_incomplete_head_and_body_wait_for_more():
    assert parse_head(b"GET /ocsp/x HTTP/1.1\r\nHost: a\r\n", 0, MAX_HEAD) is None
    data = b"POST /ocsp HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n12"
    head = parse_head(data, 0, MAX_HEAD)
    assert head.expect_continue and read_body(data, head, 100) is None


def test_chunked_body_with_extensions_and_trailers():
    data = (
        b"POST /ocsp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;name=v\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT"
    )
    head, body, end = parse(data)
    assert body == b"abcde" and data[end:] == b"NEXT"
    assert read_body(data[:-12], head, 100) is None  # the trailer section is not complete yet


def test_http10_closes_after_the_answer():
    head = parse_head(b"GET /ocsp/x HTTP/1.0\r\n\r\n", 0, MAX_HEAD)
    assert head is not None and not head.keep_alive


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /ocsp/x HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /ocsp/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET  /ocsp/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /ocsp/x HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
        (b"G@T /ocsp/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /ocsp/\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /ocsp/x HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /ocsp/x HTTQ/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /ocsp/x HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET /ocsp/x HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET /ocsp/x HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
        (b"GET /ocsp/x HTTP/1.1\nHost: a\n\n", 400),
        (b"GET /ocsp/x HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400),
        (b"GET /ocsp/x HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
        (b"POST /ocsp HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /ocsp HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400),
        (b"POST /ocsp HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /ocsp HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST /ocsp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST /ocsp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST /ocsp HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /ocsp/x HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
        (b"GET /ocsp/x HTTP/1.1\r\nHost: a\r\nX: " + b"y" * MAX_HEAD + b"\r\n\r\n", 431),
        (b"GET /ocsp/" + b"A" * MAX_HEAD + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET /ocsp/" + b"A" * MAX_HEAD, 414),  # still arriving, already too long
    ],
)  # fmt: skip
def test_malformed_heads_are_refused_with_their_status(data: bytes, status: int):
    with pytest.raises(ProtocolError) as raised:
        parse_head(data, 0, MAX_HEAD)
    assert raised.value.status == status


@pytest.mark.parametrize(
    "chunks",
    [
        b"x\r\nabc\r\n0\r\n\r\n",
        b"123456789\r\n",
        b"3\r\nabcX\r\n0\r\n\r\n",
        b"3" + b" " * 2000,
    ],
)
def test_malformed_chunked_bodies_are_refused(chunks: bytes):
    data = b"POST /ocsp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    head = parse_head(data, 0, MAX_HEAD)
    with pytest.raises(ProtocolError) as raised:
        read_body(data, head, 8192)
    assert raised.value.status == 400


def test_bodies_over_the_limit_say_how_much_is_still_to_come():
    data = b"POST /ocsp HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 1000
    head = parse_head(data, 0, MAX_HEAD)
    with pytest.raises(BodyTooLarge) as raised:
        read_body(data, head, 4096)
    assert raised.value.status == 400 and raised.value.remaining == 4000
    chunked = b"POST /ocsp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"1000\r\n" + b"x" * 4096 + b"\r\n1\r\n"
    head = parse_head(chunked, 0, MAX_HEAD)
    with pytest.raises(BodyTooLarge) as raised:
        read_body(chunked, head, 4096)
    assert raised.value.remaining == -1
