"""What the real web server (uvicorn, as `make run` starts it) answers to malformed requests
it handles itself, before Django sees them: docs/security.md ("What the HTTP server answers
itself") lists these, and this test keeps the list true. And nothing there is a 500."""

from __future__ import annotations

import socket

import pytest

KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
PLAIN_400 = (400, b"text/plain", b"Invalid HTTP request received.")


def _dechunk(raw: bytes) -> bytes:
    out = b""
    while raw:
        size, _, rest = raw.partition(b"\r\n")
        n = int(size.split(b";")[0] or b"0", 16)
        if n == 0:
            break
        out, raw = out + rest[:n], rest[n + 2 :]
    return out


def raw_exchange(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """Send `request` as bytes; return the status, the content type and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        length = int(headers.get(b"content-length", b"0") or 0)
        chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        # A body may come in later packets: read to its length, or to the last chunk.
        while (len(body) < length) if not chunked else not body.endswith(b"0\r\n\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        if chunked:
            body = _dechunk(body)
    return int(lines[0].split()[1]), headers.get(b"content-type", b""), body


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GARBAGE\r\n\r\n", PLAIN_400),
        (b"G(T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", PLAIN_400),
        (b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", PLAIN_400),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", PLAIN_400),
        (b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n", PLAIN_400),
        (b"GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x01b\r\n\r\n", PLAIN_400),
        (
            b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
            PLAIN_400,
        ),
        (
            b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            PLAIN_400,
        ),
        (
            b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            PLAIN_400,
        ),
        (b"GET /a b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", PLAIN_400),
        (b"GET /api/v1/\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", PLAIN_400),
        (
            b"GET /ws/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + UPGRADE
            + b"Sec-WebSocket-Version: 13\r\n\r\n",
            (400, b"text/plain", b"Failed to open a WebSocket connection: missing"),
        ),
        (
            b"GET /ws/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + UPGRADE
            + KEY
            + b"Sec-WebSocket-Version: 8\r\n\r\n",
            (400, b"text/plain", b"Failed to open a WebSocket connection: invalid"),
        ),
        # Refused by the application before it is accepted: a foreign origin, no session, an
        # unknown path (this last one was a 500 when Channels' router found no route).
        (
            b"GET /ws/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
            + UPGRADE
            + KEY
            + b"Sec-WebSocket-Version: 13\r\n\r\n",
            (403, b"text/plain", b""),
        ),
        (
            b"GET /ws/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\n"
            + UPGRADE
            + KEY
            + b"Sec-WebSocket-Version: 13\r\n\r\n",
            (403, b"text/plain", b""),
        ),
        (
            b"GET /ws/nothing/ HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\n"
            + UPGRADE
            + KEY
            + b"Sec-WebSocket-Version: 13\r\n\r\n",
            (403, b"text/plain", b""),
        ),
    ],
)
def test_the_server_answers_malformed_requests_as_documented(stack, request_bytes, expected):
    status, content_type, body = raw_exchange(stack.port, request_bytes)

    want_status, want_type, want_body = expected
    assert status == want_status
    assert content_type.startswith(want_type)
    assert body.startswith(want_body) if want_body else body == b""


def test_a_request_django_refuses_before_any_view_is_problem_json_on_the_real_server(stack):
    status, content_type, body = raw_exchange(
        stack.port, b"GET /api/v1/runs HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    )

    assert (status, content_type) == (400, b"application/problem+json")
    assert b'"title": "Bad request"' in body
