"""The HTTP check's request and response reading, pure: bytes in, verdict out."""

from __future__ import annotations

import base64

import pytest

from dnsreg.core.targets import HttpTarget
from dnsreg.health.http_probe import HEAD_LIMIT, HttpAnswer, ProtocolError, ResponseReader


def request_lines(url: str) -> list[str]:
    return HttpTarget.parse(url).request.decode("latin-1").split("\r\n")


def test_request_for_a_plain_url() -> None:
    t = HttpTarget.parse("http://10.0.0.5:8080/health")
    assert (t.host, t.port, t.tls) == ("10.0.0.5", 8080, False)
    lines = request_lines("http://10.0.0.5:8080/health")
    assert lines[0] == "GET /health HTTP/1.1"
    assert "Host: 10.0.0.5:8080" in lines
    assert "Connection: close" in lines
    assert lines[-2:] == ["", ""]  # the head ends with an empty line


def test_request_defaults_path_query_tls_ipv6_and_credentials() -> None:
    assert request_lines("http://example.com")[0] == "GET / HTTP/1.1"
    assert "Host: example.com" in request_lines("http://example.com")
    t = HttpTarget.parse("https://Example.COM/status?full=1&x=a b")
    assert (t.host, t.port, t.tls) == ("example.com", 443, True)
    assert request_lines(t.url)[0] == "GET /status?full=1&x=a%20b HTTP/1.1"
    v6 = HttpTarget.parse("http://[::1]:9000/h")
    assert (v6.host, v6.port) == ("::1", 9000)
    assert "Host: [::1]:9000" in request_lines(v6.url)
    lines = request_lines("http://user:p%40ss@10.0.0.5/h")
    assert f"Authorization: Basic {base64.b64encode(b'user:p@ss').decode()}" in lines


@pytest.mark.parametrize("url", ["ftp://x/", "http:///path", "http://host:99999/", "nonsense"])
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        HttpTarget.parse(url)


def feed_all(reader: ResponseReader, *parts: bytes) -> HttpAnswer | None:
    answer = None
    for part in parts:
        answer = reader.feed(part)
        if answer is not None:
            return answer
    return answer


def test_complete_answer_with_content_length_byte_by_byte() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: x\r\n\r\nok"
    reader = ResponseReader(512)
    answers = [reader.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert answers[:-1] == [None] * (len(raw) - 1)  # nothing before the last byte
    assert answers[-1] == HttpAnswer(200, "OK", b"ok")


def test_stops_reading_at_the_limit() -> None:
    reader = ResponseReader(4)
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100000\r\n\r\n"
    assert reader.feed(head + b"abc") is None
    assert reader.feed(b"defgh") == HttpAnswer(503, "Service Unavailable", b"abcd")


def test_no_body_statuses_and_empty_reason() -> None:
    assert ResponseReader(512).feed(b"HTTP/1.1 204\r\n\r\n") == HttpAnswer(204, "", b"")
    assert ResponseReader(512).feed(b"HTTP/1.0 304 Not Modified\r\n\r\n") == HttpAnswer(
        304, "Not Modified", b""
    )


def test_interim_responses_are_skipped() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n"
    )
    assert ResponseReader(512).feed(raw) == HttpAnswer(429, "Too Many Requests", b"")


def test_chunked_body_is_decoded() -> None:
    reader = ResponseReader(512)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert reader.feed(head + b"5\r\nhello\r\n") is None  # the last chunk may still come
    assert reader.feed(b"6;ext=1\r\n world\r\n0\r\n\r\n") == HttpAnswer(200, "OK", b"hello world")


def test_close_delimited_body_ends_at_eof() -> None:
    reader = ResponseReader(512)
    assert reader.feed(b"HTTP/1.0 200 OK\r\n\r\nall of it") is None
    assert reader.eof() == HttpAnswer(200, "OK", b"all of it")


def test_eof_before_an_answer_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="without answering"):
        ResponseReader(512).eof()
    reader = ResponseReader(512)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-")
    with pytest.raises(ProtocolError, match="middle"):
        reader.eof()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x response"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    ],
)
def test_garbage_is_a_protocol_error(raw: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        ResponseReader(512).feed(raw)


def test_an_endless_head_is_cut_off() -> None:
    reader = ResponseReader(512)
    filler = b"X-Filler: " + b"a" * 990 + b"\r\n"
    assert reader.feed(b"HTTP/1.1 200 OK\r\n" + filler * (HEAD_LIMIT // 1000 - 1)) is None
    with pytest.raises(ProtocolError, match="longer than"):
        reader.feed(filler * 2)
