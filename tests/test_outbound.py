"""Outbound HTTP from steps: the address guard (after DNS, on every redirect) and the
http_request step's retry and idempotency contract, against real loopback servers."""

from __future__ import annotations

import ipaddress
import socket
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from orchestrator.embedded_redis import free_port
from tests.http_recorder import Reply
from workflows.infra.outbound import (
    Allowlist,
    OutboundRefused,
    embedded_ipv4,
    guarded_client,
    is_public,
)
from workflows.steps.base import StepContext, StepError
from workflows.steps.http_request import HttpRequest, parse_retry_after

LOOPBACK = ("127.0.0.1/32",)


def context(allow=LOOPBACK, **overrides) -> StepContext:
    values = {
        "run_id": 41,
        "step_id": "call",
        "attempt": 1,
        "idempotency_key": "sb-test-key-0001",
        "event": {"data": {"order": 7}},
        "steps": {},
        "outbound_allow": allow,
    }
    values.update(overrides)
    return StepContext(**values)


def call(url: str, allow=LOOPBACK, **config):
    return HttpRequest().execute({"url": url, **config}, context(allow))


class Elsewhere:
    """A second server on another loopback address (127.0.0.2): a stand-in for an internal
    host that a redirect must not reach. It counts the requests it gets."""

    def __init__(self) -> None:
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def elsewhere():
    server = Elsewhere()
    yield server
    server.close()


# --- the address guard --------------------------------------------------------------------------
def test_a_loopback_server_is_refused_without_an_allowlist(recorder):
    with pytest.raises(StepError) as caught:
        call(recorder.url, allow=())

    assert caught.value.retryable is False
    assert "127.0.0.1" in str(caught.value) and "SIGNALBOX_OUTBOUND_ALLOW" in str(caught.value)
    assert recorder.requests == []


def test_a_loopback_server_is_reached_when_its_cidr_is_allowlisted(recorder):
    output = call(recorder.url + "/hook", method="GET")

    assert output["status"] == 200
    assert output["body"] == {"ok": True}
    assert [r.path for r in recorder.requests] == ["/hook"]


def test_a_host_name_is_checked_after_dns_resolution(recorder):
    # "localhost" is a name, but it resolves to loopback: refused without an allowlist.
    with pytest.raises(OutboundRefused):
        guarded_client((), timeout=5).get(f"http://localhost:{recorder.port}/")

    assert recorder.requests == []


def test_an_allowlisted_host_name_is_reached(recorder):
    with guarded_client(["localhost"], timeout=5) as client:
        response = client.get(f"http://localhost:{recorder.port}/named")

    assert response.status_code == 200
    assert recorder.requests[0].path == "/named"


def test_a_redirect_to_an_address_outside_the_allowlist_is_refused(recorder, elsewhere):
    recorder.answer(Reply(status=302, headers={"Location": elsewhere.url}))

    with pytest.raises(StepError) as caught:
        call(recorder.url, method="GET")

    assert "127.0.0.2" in str(caught.value)
    assert caught.value.retryable is False
    assert len(recorder.requests) == 1
    assert elsewhere.hits == 0


def test_a_redirect_within_the_allowlist_is_followed(recorder, elsewhere):
    recorder.answer(Reply(status=302, headers={"Location": elsewhere.url}))

    output = call(recorder.url, allow=("127.0.0.0/8",), method="GET")

    assert output["status"] == 200 and output["body"] == "ok"
    assert elsewhere.hits == 1


@pytest.fixture
def dial_trap(monkeypatch):
    """Every TCP connection attempt, recorded and never made: had the guard let a refused
    address through, the test sees it here instead of dialling it."""
    dialled: list[tuple] = []

    def trapped(address, *args, **kwargs):
        dialled.append(address)
        raise ConnectionRefusedError(f"dial trap: {address!r} was not dialled")

    monkeypatch.setattr(socket, "create_connection", trapped)
    return dialled


@pytest.fixture
def loopback_only_dials(monkeypatch):
    """Connections to 127.0.0.1 go through (the test's own servers); any other is recorded
    and never made."""
    real = socket.create_connection
    elsewhere: list[tuple] = []

    def dial(address, *args, **kwargs):
        if address[0] == "127.0.0.1":
            return real(address, *args, **kwargs)
        elsewhere.append(address)
        raise ConnectionRefusedError(f"dial trap: {address!r} was not dialled")

    monkeypatch.setattr(socket, "create_connection", dial)
    return elsewhere


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fd00::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "2130706433",  # 127.0.0.1 written as one number
        "0x7f.1",  # 127.0.0.1 in inet_aton shorthand
        "224.0.0.1",
    ],
)
def test_a_non_public_address_is_refused_before_any_connection(host, dial_trap):
    with pytest.raises(StepError) as caught:
        call(f"http://{host}:{free_port()}/", allow=(), method="GET", timeout_seconds=5)

    assert "refusing to connect" in str(caught.value)
    assert caught.value.retryable is False
    assert dial_trap == []


@pytest.mark.parametrize(
    ("host", "embedded"),
    [
        ("[64:ff9b::7f00:1]", "127.0.0.1"),  # NAT64 well-known prefix
        ("[64:ff9b::a9fe:a9fe]", "169.254.169.254"),
        ("[64:ff9b::10.1.2.3]", "10.1.2.3"),
        ("[64:ff9b:1::10.1.2.3]", "10.1.2.3"),  # NAT64 local-use prefix, /96 layout
        ("[64:ff9b:1:a00:1::]", "10.0.1.0"),  # local-use, /48 layout (around the u octet)
        ("[2002:a00:1::1]", "10.0.0.1"),  # 6to4
        ("[2002:7f00:1::]", "127.0.0.1"),
        ("[2002:a9fe:a9fe::]", "169.254.169.254"),
        ("[::127.0.0.1]", "127.0.0.1"),  # IPv4-compatible
        ("[::10.0.0.1]", "10.0.0.1"),
        ("[::192.168.1.1]", "192.168.1.1"),
        ("[::ffff:192.168.1.1]", "192.168.1.1"),  # IPv4-mapped
        ("[::ffff:100.64.0.1]", "100.64.0.1"),
        ("[2001:0:4136:e378:8000:63bf:f5ff:fffe]", "10.0.0.1"),  # Teredo, client 10.0.0.1
    ],
)
def test_an_ipv6_address_embedding_a_private_ipv4_is_refused_before_any_connection(
    host, embedded, dial_trap
):
    with pytest.raises(StepError) as caught:
        call(f"http://{host}:{free_port()}/", allow=(), method="GET", timeout_seconds=5)

    assert "refusing to connect" in str(caught.value)
    assert caught.value.retryable is False
    assert dial_trap == []
    assert ipaddress.IPv4Address(embedded) in embedded_ipv4(ipaddress.ip_address(host[1:-1]))


@pytest.mark.parametrize(
    "target", ["[64:ff9b::7f00:2]", "[2002:7f00:2::]", "[::127.0.0.2]", "[::ffff:127.0.0.2]"]
)
def test_a_redirect_to_an_ipv6_form_of_an_internal_address_is_refused(
    recorder, target, loopback_only_dials
):
    recorder.answer(Reply(status=302, headers={"Location": f"http://{target}:{free_port()}/"}))

    with pytest.raises(StepError) as caught:
        call(recorder.url, method="GET")

    assert "refusing to connect" in str(caught.value)
    assert len(recorder.requests) == 1
    assert loopback_only_dials == []


def test_the_dial_trap_sees_an_address_the_guard_lets_through(dial_trap):
    # The trap itself works: an address the guard lets through reaches create_connection.
    with pytest.raises(StepError):
        call(f"http://127.0.0.1:{free_port()}/", method="GET", timeout_seconds=5)

    assert [address[0] for address in dial_trap] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("::ffff:10.1.2.3", False),
        ("169.254.169.254", False),
        ("239.1.1.1", False),
        # IPv6 forms that carry an IPv4 are judged as that IPv4.
        ("64:ff9b::808:808", True),
        ("64:ff9b::a00:1", False),
        ("64:ff9b:1:808:8:808:808:808", True),  # 8.8.8.8 in every local-use layout
        ("64:ff9b:1::a00:1", False),
        ("2002:808:808::1", True),
        ("2002:c0a8:101::1", False),
        ("::8.8.8.8", True),
        ("::a00:1", False),
        ("::", False),
        ("::1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo, client 192.0.2.45
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True),  # Teredo, client 8.8.8.8
        ("fe80::1", False),
        ("ff02::1", False),
    ],
)
def test_is_public_tells_public_from_internal_addresses(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


def test_an_allowlist_takes_hosts_and_cidrs_and_ignores_blanks():
    allow = Allowlist(["127.0.0.1/32", " Example.INTERNAL ", "", "10.0.0.0/8"])

    assert allow.allows_host("example.internal") and allow.allows_host("example.internal.")
    assert allow.allows_address(ipaddress.ip_address("10.2.3.4"))
    assert not allow.allows_address(ipaddress.ip_address("127.0.0.2"))
    assert not allow.allows_host("other.internal")


def test_a_proxy_from_the_environment_is_not_used(recorder, monkeypatch):
    from tests.http_recorder import Recorder

    proxy = Recorder()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv("ALL_PROXY", proxy.url)

        call(recorder.url, method="GET")

        assert len(recorder.requests) == 1
        assert proxy.requests == []
    finally:
        proxy.close()


# --- the http_request step ----------------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_a_5xx_or_429_answer_is_a_retryable_error_with_retry_after(recorder, status):
    recorder.answer(Reply(status=status, headers={"Retry-After": "7"}))

    with pytest.raises(StepError) as caught:
        call(recorder.url)

    assert caught.value.retryable is True
    assert caught.value.retry_after == 7.0
    assert str(status) in str(caught.value)


def test_a_retry_after_date_becomes_seconds_from_now(recorder):
    when = datetime.now(UTC) + timedelta(seconds=120)
    recorder.answer(Reply(status=503, headers={"Retry-After": format_datetime(when, usegmt=True)}))

    with pytest.raises(StepError) as caught:
        call(recorder.url)

    assert 100 <= caught.value.retry_after <= 121


def test_a_5xx_without_retry_after_is_retryable_with_no_hint(recorder):
    recorder.answer(Reply(status=503))

    with pytest.raises(StepError) as caught:
        call(recorder.url)

    assert caught.value.retryable is True
    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("  30 ", 30.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("-5", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_is_parsed_as_seconds_or_a_date(value, seconds):
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_a_4xx_answer_is_not_retryable(recorder, status):
    recorder.answer(Reply(status=status))

    with pytest.raises(StepError) as caught:
        call(recorder.url)

    assert caught.value.retryable is False
    assert str(status) in str(caught.value)


def test_a_connection_failure_is_retryable():
    with pytest.raises(StepError) as caught:
        call(f"http://127.0.0.1:{free_port()}/", timeout_seconds=5)

    assert caught.value.retryable is True


def test_the_idempotency_key_is_sent_and_the_same_on_every_attempt(recorder):
    recorder.answer(Reply(status=503))
    with pytest.raises(StepError):
        HttpRequest().execute({"url": recorder.url}, context(attempt=1))

    HttpRequest().execute({"url": recorder.url}, context(attempt=2))

    keys = [r.headers["Idempotency-Key"] for r in recorder.requests]
    assert keys == ["sb-test-key-0001", "sb-test-key-0001"]


def test_a_configured_idempotency_key_header_cannot_replace_ours(recorder):
    call(recorder.url, headers={"idempotency-key": "mine", "X-Trace": "t-1"})

    sent = recorder.requests[0].headers
    assert [v for k, v in sent.items() if k.lower() == "idempotency-key"] == ["sb-test-key-0001"]
    assert sent["X-Trace"] == "t-1"


def test_the_method_query_and_json_body_are_sent(recorder):
    recorder.answer(Reply(status=201, body={"created": 1}))

    output = call(recorder.url + "/things", method="PUT", query={"a": "1 2"}, json={"x": [1]})

    sent = recorder.requests[0]
    assert (sent.method, sent.path) == ("PUT", "/things?a=1+2")
    assert sent.json() == {"x": [1]}
    assert output == {
        "status": 201,
        "headers": {"content-type": "application/json"},
        "body": {"created": 1},
    }


def test_send_event_posts_the_event_data(recorder):
    call(recorder.url, send_event=True)

    assert recorder.requests[0].method == "POST"
    assert recorder.requests[0].json() == {"order": 7}


def test_a_redirect_loop_is_not_retried(recorder):
    recorder.default = Reply(status=302, headers={"Location": recorder.url + "/again"})

    with pytest.raises(StepError) as caught:
        call(recorder.url, method="GET")

    assert caught.value.retryable is False
    assert "redirect" in str(caught.value)
    assert len(recorder.requests) <= 6


def test_guarded_client_talks_real_http(recorder):
    with guarded_client(LOOPBACK, timeout=5) as client:
        response = client.post(recorder.url + "/raw", json={"a": 1})

    assert isinstance(response, httpx.Response) and response.status_code == 200
    assert recorder.requests[0].json() == {"a": 1}


def test_guarded_clients_share_one_verifying_tls_context():
    # Loading the CA bundle per request cost a step 100+ ms on a loaded machine (the soak).
    import ssl

    contexts = []
    for _ in range(2):
        with guarded_client([], timeout=5) as client:
            contexts.append(client._transport._pool._ssl_context)
    assert contexts[0] is contexts[1]
    assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname
