"""POST /api/v1/events in all three CloudEvents HTTP modes."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from workflows.api.auth import token_required
from workflows.api.bodies import BodyTooLarge, media_type, read_limited
from workflows.api.problems import problem, problem_body
from workflows.events import bus, rate_limit
from workflows.events import intake as event_intake
from workflows.events.envelope import (
    Envelope,
    InvalidEvent,
    from_batch,
    from_binary,
    from_structured,
    loads_json,
)
from workflows.infra import tracing
from workflows.live import notify

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
RESERVED_SOURCES = ("/signalbox/", "/schedules/", "/hooks/")


def body_limit(mode: str) -> int:
    limits = settings.SIGNALBOX
    return limits["MAX_BATCH_BYTES"] if mode == BATCH else limits["MAX_EVENT_BYTES"]


def parse_events(mode: str, headers, body: bytes) -> list[Envelope]:
    """The envelopes of a request body in `mode`. Raises InvalidEvent."""
    if mode == BATCH:
        return from_batch(loads_json(body), max_entries=settings.SIGNALBOX["MAX_BATCH_EVENTS"])
    if mode == STRUCTURED:
        return [from_structured(loads_json(body))]
    return [from_binary(headers, body, headers.get("Content-Type", ""))]


def forged_sources(envelopes: list[Envelope]) -> list[dict]:
    """Sources Signalbox itself produces under are reserved: an outside producer must not
    forge run events, schedule ticks or webhook deliveries (or take their ids)."""
    return [
        {"index": i, "attribute": "source", "message": f"{e.source!r} is reserved for Signalbox"}
        for i, e in enumerate(envelopes)
        if e.source.startswith(RESERVED_SOURCES)
    ]


def rate_limited(verdict: rate_limit.Verdict) -> tuple[dict, list[tuple[bytes, bytes]]]:
    """The 429 problem body and its Retry-After header, for the view and the fast path."""
    limits = settings.SIGNALBOX
    body = problem_body(
        429,
        "Too many events",
        f"this token may send {limits['INGEST_RATE_PER_TOKEN']:g} events per second "
        f"(bursts of {limits['INGEST_BURST_PER_TOKEN']}); nothing was stored, "
        f"send it again in {verdict.retry_after} s",
        kind="rate-limited",
        retry_after=verdict.retry_after,
    )
    return body, [(b"retry-after", str(verdict.retry_after).encode())]


def accepted_response(mode: str, submission: event_intake.Submission) -> tuple[int, dict]:
    """Status and JSON body for stored events: 202, or 200 for a lone duplicate."""
    results = [accepted.as_json() for accepted in submission.accepted]
    if mode == BATCH:
        return 202, {"events": results}
    return (200 if results[0]["duplicate"] else 202), results[0]


@require_http_methods(["POST"])
@token_required("editor")
def post_events(request):
    """The whole of POST /api/v1/events. The web server's fast path (api.fast_events) takes
    the requests it can answer 2xx without this view, and hands every other one here."""
    mode = media_type(request)
    if mode not in (STRUCTURED, BATCH) and "ce-specversion" not in request.headers:
        return problem(
            415,
            "Unsupported media type",
            f"send {STRUCTURED} (structured), {BATCH} (batch), or ce-* headers (binary mode)",
            kind="unsupported-media-type",
        )
    try:
        envelopes = parse_events(mode, request.headers, read_limited(request, body_limit(mode)))
    except BodyTooLarge as exc:
        return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
    except InvalidEvent as exc:
        return problem(
            400, "Invalid CloudEvent", str(exc), kind="invalid-event", errors=exc.problems
        )
    forged = forged_sources(envelopes)
    if forged:
        return problem(
            400, "Invalid CloudEvent", "reserved source", kind="invalid-event", errors=forged
        )

    # The fast path may have counted these events already (it hands over a schema
    # violation, or a commit it could not make); the ASGI scope says so, no client can.
    already = getattr(request, "scope", {}).get(rate_limit.CHECKED, False)
    verdict = (
        rate_limit.ALLOWED
        if already
        else rate_limit.check(token_id=request.api_token.pk, cost=len(envelopes))
    )
    if not verdict.allowed:
        body, _headers = rate_limited(verdict)
        response = JsonResponse(body, status=429, content_type="application/problem+json")
        response["Retry-After"] = str(verdict.retry_after)
        return response

    # A batch is accepted or refused whole; one commit for all of it, 2xx only after it.
    traced = tracing.ingest(
        envelopes,
        header=request.headers.get("traceparent"),
        tracestate=request.headers.get("tracestate"),
        channel="http",
    )
    submission = event_intake.Submission(envelopes, trace=traced.traceparent)
    try:
        with transaction.atomic():
            created = event_intake.store([submission])
    finally:
        traced.end(
            stored=len(submission.accepted),
            error=type(submission.error).__name__ if submission.error else "",
        )
    if isinstance(submission.error, event_intake.SchemaViolations):
        return schema_problem(submission.error)
    # Committed: put them on the bus in one round trip (the outbox relay covers a failure).
    bus.publish_many(created)
    notify.events_ingested(events=created)
    status, body = accepted_response(mode, submission)
    return JsonResponse(body, status=status)


def schema_problem(violations: event_intake.SchemaViolations):
    """Every entry whose data breaks its type's schema (the batch is refused whole)."""
    errors = [
        {"index": i, "type": v.event_type, "schema_version": v.version, "errors": v.errors}
        for i, v in violations.found
    ]
    detail = "; ".join(
        f"[{v['index']}] {v['type']} v{v['schema_version']}: "
        + ", ".join(f"{e['path']} {e['message']}" for e in v["errors"][:3])
        for v in errors
    )
    return problem(
        400, "Event data does not match its schema", detail, kind="schema-violation", errors=errors
    )


@csrf_exempt  # token-authenticated in the views it dispatches to
@require_http_methods(["GET", "POST"])  # so a 405 lists both in Allow
def events_endpoint(request):
    """/api/v1/events: POST ingests, GET reads the event store."""
    if request.method == "GET":
        from workflows.api.event_store import list_events

        return list_events(request)
    return post_events(request)
