"""POST /api/v1/events in all three CloudEvents HTTP modes."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from ..events import bus
from ..events.envelope import InvalidEvent, from_batch, from_binary, from_structured, loads_json
from ..services.events import ingest_event
from ..services.schemas import SchemaViolation, check_event_data
from .auth import token_required
from .bodies import BodyTooLarge, media_type, read_limited
from .problems import problem

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
RESERVED_SOURCES = ("/signalbox/", "/schedules/", "/hooks/")


def _parse(request, mode: str):
    limits = settings.SIGNALBOX
    if mode == BATCH:
        body = read_limited(request, limits["MAX_BATCH_BYTES"])
        return from_batch(loads_json(body), max_entries=limits["MAX_BATCH_EVENTS"])
    body = read_limited(request, limits["MAX_EVENT_BYTES"])
    if mode == STRUCTURED:
        return [from_structured(loads_json(body))]
    return [from_binary(request.headers, body, request.headers.get("Content-Type", ""))]


@require_http_methods(["POST"])
@token_required("editor")
def post_events(request):
    mode = media_type(request)
    if mode not in (STRUCTURED, BATCH) and "ce-specversion" not in request.headers:
        return problem(
            415,
            "Unsupported media type",
            f"send {STRUCTURED} (structured), {BATCH} (batch), or ce-* headers (binary mode)",
            kind="unsupported-media-type",
        )
    try:
        envelopes = _parse(request, mode)
    except BodyTooLarge as exc:
        return problem(413, "Body too large", f"the limit is {exc.limit} bytes", kind="too-large")
    except InvalidEvent as exc:
        return problem(
            400, "Invalid CloudEvent", str(exc), kind="invalid-event", errors=exc.problems
        )

    # Sources Signalbox itself produces under are reserved: an outside producer must not
    # forge run events, schedule ticks or webhook deliveries (or take their ids).
    forged = [
        {"index": i, "attribute": "source", "message": f"{e.source!r} is reserved for Signalbox"}
        for i, e in enumerate(envelopes)
        if e.source.startswith(RESERVED_SOURCES)
    ]
    if forged:
        return problem(
            400, "Invalid CloudEvent", "reserved source", kind="invalid-event", errors=forged
        )

    # Check every entry before storing any: a batch is accepted or refused whole.
    checks, violations = [], []
    for index, envelope in enumerate(envelopes):
        try:
            checks.append(check_event_data(envelope))
        except SchemaViolation as exc:
            violations.append(
                {
                    "index": index,
                    "type": exc.event_type,
                    "schema_version": exc.version,
                    "errors": exc.errors,
                }
            )
    if violations:
        detail = "; ".join(
            f"[{v['index']}] {v['type']} v{v['schema_version']}: "
            + ", ".join(f"{e['path']} {e['message']}" for e in v["errors"][:3])
            for v in violations
        )
        return problem(
            400,
            "Event data does not match its schema",
            detail,
            kind="schema-violation",
            errors=violations,
        )

    with transaction.atomic():  # one commit for a whole batch; 2xx only after it
        results, created_events = [], []
        for envelope, check in zip(envelopes, checks, strict=True):
            event, created = ingest_event(
                envelope=envelope, channel="http", check=check, publish=False
            )
            if created:
                created_events.append(event)
            results.append(
                {
                    "id": event.pk,
                    "source": event.source,
                    "ce_id": event.ce_id,
                    "duplicate": not created,
                    "validation": event.validation,
                }
            )
    # Committed: put them on the bus in one round trip (the outbox relay covers a failure).
    bus.publish_many(created_events)
    if mode == BATCH:
        return JsonResponse({"events": results}, status=202)
    return JsonResponse(results[0], status=200 if results[0]["duplicate"] else 202)


@csrf_exempt  # token-authenticated in the views it dispatches to
@require_http_methods(["GET", "POST"])  # so a 405 lists both in Allow
def events_endpoint(request):
    """/api/v1/events: POST ingests, GET reads the event store."""
    if request.method == "GET":
        from .event_store import list_events

        return list_events(request)
    return post_events(request)
