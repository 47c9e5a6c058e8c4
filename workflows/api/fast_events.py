"""The fast path of POST /api/v1/events, in front of Django's request cycle.

Under an ASGI server every Django request runs its middleware and view through thread
hand-offs, and the view would then wait for a commit of its own. This path answers the
requests that will be accepted without either: on the server's event loop it reads the
body within its limit, authenticates the bearer token (a per-process cache, confirmed
unrevoked in the storing transaction), parses and validates the CloudEvents, and hands them
to this process's group committer (events.group_commit), whose one commit is shared by
every request queued meanwhile. The answer goes out once that commit is done.

Everything else is handed to Django unchanged (its body replayed): a missing, unknown or
under-privileged token, an unsupported media type, an oversized or invalid body, a reserved
source, a schema violation, a token revoked a moment ago. The view in api.events is the
one place those answers are written, so both paths answer alike. Two answers are written
here, from the bodies api.events builds: 503 when the store is down, and 429 when the
token is over its rate (events.rate_limit), so that a flood never reaches the slow path.
"""

from __future__ import annotations

import asyncio
import logging
from functools import lru_cache

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.http.request import split_domain_port, validate_host

from workflows.access import roles
from workflows.access.tokens import cached_identity, identify
from workflows.api.events import (
    BATCH,
    STRUCTURED,
    accepted_response,
    body_limit,
    forged_sources,
    parse_events,
    rate_limited,
)
from workflows.api.problems import problem_body
from workflows.events import intake as event_intake
from workflows.events import rate_limit
from workflows.events.envelope import InvalidEvent
from workflows.events.group_commit import committer
from workflows.infra import counters, tracing

log = logging.getLogger("signalbox.ingest")

PATH = "/api/v1/events"
REQUIRED_ROLE = "editor"
# What Django's SecurityMiddleware and XFrameOptionsMiddleware add to every API answer.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class Headers(dict):
    """Request headers by lower-case name, read as Django's `request.headers` is."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)

    def __contains__(self, name):
        return super().__contains__(name.lower())

    @classmethod
    def of(cls, scope) -> Headers:
        """As Django's ASGIRequest reads them, so both paths see the same attributes: names
        with an underscore dropped, a repeated header's values joined with commas."""
        headers = cls()
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            if "_" not in name:
                headers[name] = f"{headers[name]},{value}" if name in headers else value
        return headers


class FastEventIngest:
    """ASGI middleware: takes acceptable event POSTs, passes the rest to `app`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            return await self.app(scope, receive, send)
        headers = Headers.of(scope)
        mode = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        eligible = (mode in (STRUCTURED, BATCH) or "ce-specversion" in headers) and _host_allowed(
            headers.get("host", "")
        )
        answered: list[int] = []
        send = _noting_status(send, answered)
        try:
            if not eligible:
                return await self.app(scope, receive, send)
            body, ended, within_limit = await _read(receive, body_limit(mode))
            answer = await self._accept(scope, headers, mode, body) if within_limit else None
            if answer is None:  # Django answers it, from the same bytes
                return await self.app(scope, _replay(body, receive, ended), send)
            status, payload, extra = answer
            await _respond(send, status, payload, extra)
        finally:
            # After the answer went out; accepted events are counted when published.
            result = counters.ingest_result(answered[0], lone=mode != BATCH) if answered else None
            if result is not None:
                await asyncio.to_thread(counters.count_ingest, "http", result)

    async def _accept(self, scope, headers: Headers, mode: str, body: bytes):
        try:
            identity = await _identity(headers.get("authorization", ""))
        except DatabaseError as exc:
            return _unavailable(exc)
        if identity is None or roles.rank(identity.role) < roles.rank(REQUIRED_ROLE):
            return None
        try:
            envelopes = parse_events(mode, headers, body)
        except InvalidEvent:
            return None
        if forged_sources(envelopes):
            return None
        verdict = await rate_limit.acheck(token_id=identity.pk, cost=len(envelopes))
        if not verdict.allowed:  # answered here: a flood must not reach the slow path
            return 429, *rate_limited(verdict)
        scope[rate_limit.CHECKED] = True  # if handed to the view now, it does not count again
        traced = tracing.ingest(
            envelopes,
            header=headers.get("traceparent"),
            tracestate=headers.get("tracestate"),
            channel="http",
        )
        submission = event_intake.Submission(
            envelopes, token_id=identity.pk, trace=traced.traceparent
        )
        try:
            # Bounded: a database that does not answer at all (a black-holed network) would
            # otherwise hold the request for as long as the silence lasts. The submission
            # may still commit after the 503; the producer's resend of the same id is then
            # stored once (unique on source and id).
            await asyncio.wait_for(
                asyncio.shield(committer().submit_async(submission)),
                settings.SIGNALBOX_INGEST_STORE_TIMEOUT_SECONDS,
            )
        except DatabaseError as exc:
            traced.end(error=f"store unavailable: {type(exc).__name__}")
            return _unavailable(exc)
        except TimeoutError:
            traced.end(error="store did not answer in time")
            return _unavailable("the event store did not answer in time")
        except Exception:  # noqa: BLE001 - logged by the committer; the view tries alone
            traced.end(error="handed to the view")
            return None
        if submission.error is not None:  # a schema violation, a revoked token
            traced.end(error="handed to the view")
            return None
        traced.end(stored=len(submission.accepted))
        status, payload = accepted_response(mode, submission)
        return status, payload, []


def _unavailable(exc: DatabaseError | str):
    log.warning("events not stored, answering 503: %s", exc)
    unavailable = problem_body(
        503,
        "Service unavailable",
        "the event store cannot be reached; send it again (an id already stored is not"
        " stored twice)",
        kind="unavailable",
    )
    return 503, unavailable, [(b"retry-after", b"1")]


async def _identity(authorization: str):
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return cached_identity(credentials) or await sync_to_async(_identify)(credentials)


def _identify(credentials: str):
    """`identify` on Django's sync thread. No request signals run on this path, so nothing
    else would drop this thread's connection once the database broke it (a restart): drop
    it here, and the next lookup connects afresh."""
    try:
        return identify(credentials)
    except DatabaseError:
        connection.close()
        raise


def _host_allowed(host: str) -> bool:
    # Keyed by the settings too, so a changed ALLOWED_HOSTS (a test's override) is obeyed.
    return _host_verdict(host, tuple(settings.ALLOWED_HOSTS), settings.DEBUG)


@lru_cache(maxsize=256)
def _host_verdict(host: str, allowed: tuple[str, ...], debug: bool) -> bool:
    """Cached: clients send the same few Host headers, and Django's parse and pattern
    match cost ~5 µs a request. Bounded, so varied Host headers cannot grow it."""
    domain, _port = split_domain_port(host)
    if debug and not allowed:
        allowed = (".localhost", "127.0.0.1", "[::1]")
    return bool(domain) and validate_host(domain, allowed)


async def _read(receive, limit: int) -> tuple[bytes, bool, bool]:
    """(body, ended, within_limit): the whole body if it is at most `limit` bytes; else
    what was read, stopping once past the limit (`ended` says whether the stream was)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks), True, False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        ended = not message.get("more_body", False)
        if size > limit or ended:
            return b"".join(chunks), ended, size <= limit


def _replay(body: bytes, receive, ended: bool):
    """A `receive` that hands over what was already read, then the rest of the stream."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not ended}
        return await receive()

    return replayed


def _noting_status(send, answered: list[int]):
    async def noting(message):
        if message["type"] == "http.response.start":
            answered.append(message["status"])
        await send(message)

    return noting


async def _respond(send, status: int, payload: dict, extra: list) -> None:
    body = orjson.dumps(payload)
    content_type = b"application/problem+json" if status >= 400 else b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
