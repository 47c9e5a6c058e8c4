"""`http_request`: call an HTTP endpoint, safely and idempotently.

Sends an Idempotency-Key derived from (run, step), the same on every attempt, so a receiver
that deduplicates sees one effect however often we retry, and the W3C `traceparent` of the
run's trace (workflows/infra/tracing.py). 5xx, 429, network errors and
timeouts are retryable (honouring Retry-After); other 4xx are not. Every error carries a
`code` that retry policies match by prefix (`retry_on: ["http.5", "timeout"]`):

    http.<status>     the server answered 4xx/5xx (e.g. http.503, http.429, http.404)
    network           no answer: connection refused or reset, DNS failure
    timeout           no answer within timeout_seconds
    outbound_refused  the address guard refused the destination (or a redirect's)
    redirects         too many redirects, or a redirect to a non-HTTP URL
    invalid_url       the rendered URL cannot be parsed
    circuit_open      the host's circuit breaker is open: the host was not called

The circuit breaker (workflows/infra/circuit.py) is per host:port and shared by all workers; 5xx,
429, network errors and timeouts count as failures, any other answer as a success.
"""

from __future__ import annotations

import base64
import email.utils
import json
import time

import httpx

from workflows.infra import circuit, tracing
from workflows.infra.outbound import OutboundRefused, guarded_client
from workflows.steps.base import StepContext, StepError, StepKind
from workflows.steps.registry import register

MAX_BODY_BYTES = 1_000_000
KEPT_HEADERS = ("content-type", "location", "retry-after", "etag")
MAX_REDIRECTS = 5


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@register
class HttpRequest(StepKind):
    name = "http_request"
    title = "HTTP request"
    description = "Call an HTTP API; retries 5xx/429 and sends an Idempotency-Key."
    icon = "globe"
    group = "actions"
    side_effects = True
    config_schema = {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "method": {
                "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"],
                "default": "POST",
            },
            "url": {"type": "string", "pattern": "^https?://", "maxLength": 4096},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "query": {"type": "object", "additionalProperties": {"type": "string"}},
            "json": {},
            "form": {"type": "object", "additionalProperties": {"type": "string"}},
            "send_event": {
                "type": "boolean",
                "description": "send the triggering event's data as the JSON body",
            },
            "auth": {
                "type": "object",
                "additionalProperties": False,
                "description": "basic (username and password) or bearer (token)",
                "properties": {
                    "username": {"type": "string", "maxLength": 1024},
                    "password": {"type": "string", "maxLength": 4096},
                    "token": {"type": "string", "maxLength": 8192},
                },
                "oneOf": [{"required": ["username", "password"]}, {"required": ["token"]}],
            },
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        },
        "not": {"required": ["json", "form"]},
    }
    # Headers and credentials leave with the request and are never stored (the stored input
    # keeps them unrendered; the output keeps only a few response headers).
    secret_fields = ("/headers/*", "/auth/username", "/auth/password", "/auth/token")

    def secret_destination_problems(self, config):
        # A secret goes only to a host the definition fixes: a template before the path
        # would let an event's data send the credential to a host of its choosing.
        url = config.get("url", "")
        start = url.find("{{")
        if start == -1:
            return []
        authority = url.split("://", 1)[-1]
        offset = len(url) - len(authority)
        slash = min((i for i in (authority.find(c) for c in "/?#") if i != -1), default=-1)
        if slash == -1 or start < offset + slash:
            return [
                (
                    "/url",
                    "a step that sends a secret needs a fixed scheme, host and port: "
                    "templates may only follow them (in the path or query)",
                )
            ]
        return []

    def execute(self, config, ctx: StepContext):
        method = config.get("method", "POST")
        url = config["url"]
        # Ours replaces a configured one in any letter case; two such headers would reach the
        # receiver, and it might deduplicate on the wrong one. Values are text (a whole-string
        # template may render a number or null).
        headers = {
            k: "" if v is None else str(v)
            for k, v in config.get("headers", {}).items()
            if k.lower() != "idempotency-key"
        }
        headers["Idempotency-Key"] = ctx.idempotency_key
        auth = config.get("auth") or {}
        sent_credentials: list[str] = []
        if "token" in auth:
            headers["Authorization"] = f"Bearer {auth['token']}"
        elif "username" in auth:
            pair = f"{auth['username']}:{auth['password']}".encode()
            # The encoded pair is no secret's plaintext: kept out of an echo by hand below.
            sent_credentials.append(base64.b64encode(pair).decode())
            headers["Authorization"] = f"Basic {sent_credentials[-1]}"
        kwargs: dict = {"params": config.get("query"), "headers": headers}
        if "json" in config:
            kwargs["json"] = config["json"]
        elif "form" in config:
            kwargs["data"] = config["form"]
        elif config.get("send_event"):
            kwargs["json"] = ctx.event.get("data")
        timeout = float(config.get("timeout_seconds", 30))
        try:
            host = circuit.host_of(url)
        except httpx.InvalidURL as exc:
            raise StepError(f"invalid URL {url!r}: {exc}", code="invalid_url") from exc

        try:
            permit = circuit.acquire(host, probe_seconds=2 * timeout)
        except circuit.CircuitOpen as exc:
            raise StepError(
                str(exc), retryable=True, retry_after=exc.retry_after, code="circuit_open"
            ) from exc
        settled = False
        try:
            status, response_headers, body = _send(method, url, kwargs, ctx, timeout)
            failure = status >= 500 or status == 429
            if failure:
                circuit.failed(permit, f"http.{status}")
            else:
                circuit.succeeded(permit)
            settled = True
        except StepError as exc:
            if exc.code in ("network", "timeout"):
                circuit.failed(permit, exc.code)
                settled = True
            elif exc.code == "redirects":
                circuit.succeeded(permit)  # the host answered; where it sends us is the issue
                settled = True
            raise
        finally:
            if not settled:  # never reached the host (refused, a bug): no verdict on it
                circuit.release(permit)

        if failure:
            raise StepError(
                f"{method} {url} answered {status}",
                retryable=True,
                retry_after=parse_retry_after(response_headers.get("retry-after")),
                code=f"http.{status}",
            )
        if status >= 400:
            raise StepError(f"{method} {url} answered {status}", code=f"http.{status}")
        return _without(
            {
                "status": status,
                "headers": {k: v for k, v in response_headers.items() if k.lower() in KEPT_HEADERS},
                "body": _body(body, response_headers),
            },
            sent_credentials,
        )


def _without(value, texts: list[str]):
    """`value` with each of `texts` (credentials a server may echo) replaced by a mask."""
    if not texts:
        return value
    if isinstance(value, str):
        for text in texts:
            value = value.replace(text, "••••••")
        return value
    if isinstance(value, list):
        return [_without(v, texts) for v in value]
    if isinstance(value, dict):
        return {k: _without(v, texts) for k, v in value.items()}
    return value


def _send(method: str, url: str, kwargs: dict, ctx: StepContext, timeout: float):
    """One request, with the trace context: a client span's `traceparent` (tracing on),
    else the triggering event's own, passed on; it replaces a configured one."""
    with tracing.outgoing_http(method, url, trigger=ctx.event) as call:
        if call.headers:
            names = {name.lower() for name in call.headers}
            headers = {k: v for k, v in kwargs["headers"].items() if k.lower() not in names}
            kwargs = {**kwargs, "headers": {**headers, **call.headers}}
        status, headers, body = _exchange(method, url, kwargs, ctx, timeout)
        call.answered(status)
        return status, headers, body


def _exchange(method: str, url: str, kwargs: dict, ctx: StepContext, timeout: float):
    """One request (redirects followed, each one through the address guard); returns
    (status, headers, body bytes up to MAX_BODY_BYTES) or raises a coded StepError."""
    try:
        with guarded_client(ctx.outbound_allow, timeout=timeout) as client:
            client.follow_redirects = True
            client.max_redirects = MAX_REDIRECTS
            with client.stream(method, url, **kwargs) as response:
                body = bytearray()
                # A bounded read: a huge answer must not exhaust the worker's memory.
                for chunk in response.iter_bytes():
                    body += chunk[: MAX_BODY_BYTES - len(body)]
                    if len(body) >= MAX_BODY_BYTES:
                        break
                return response.status_code, response.headers, _text(bytes(body), response)
    except OutboundRefused as exc:
        raise StepError(str(exc), code="outbound_refused") from exc
    except httpx.TooManyRedirects as exc:
        raise StepError(
            f"too many redirects (over {MAX_REDIRECTS}): {exc}", code="redirects"
        ) from exc
    except httpx.UnsupportedProtocol as exc:
        raise StepError(
            f"redirected to a URL that is not http(s): {exc}", code="redirects"
        ) from exc
    except httpx.TimeoutException as exc:
        raise StepError(
            f"{method} {url}: no answer within {timeout:g}s ({type(exc).__name__})",
            retryable=True,
            code="timeout",
        ) from exc
    except httpx.TransportError as exc:
        raise StepError(
            f"{method} {url}: {type(exc).__name__}: {exc}", retryable=True, code="network"
        ) from exc
    except httpx.InvalidURL as exc:
        raise StepError(f"invalid URL {url!r}: {exc}", code="invalid_url") from exc


def _text(content: bytes, response: httpx.Response) -> str:
    return content.decode(response.encoding or "utf-8", errors="replace")


def _body(text: str, headers: httpx.Headers):
    if "json" in headers.get("content-type", ""):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
