"""`emit_event`: publish a CloudEvent to the bus, caused by this run, and optionally send it
out to broker connections or HTTP endpoints too (`to`).

The event's id is the attempt's idempotency key (the same on every attempt), so a retried
step emits no second event; it carries the run's correlation id, the triggering event as its
cause, and the trace context (its own span's, when tracing is on). Other workflows' triggers
and waiting steps receive it like any other event.

`to` lists destinations shaped like the `publish` step's (`connection` + `target`, or `url`
+ `headers`; `mode`, `timeout_seconds`), checked and sent by the same code (sending.py).
The event is always stored and put on the bus first; what goes out is that stored event,
byte for byte the same on every attempt (its time, trace context and id). Each destination
that confirmed is checkpointed, so a retried attempt sends only to those that did not.
"""

from __future__ import annotations

from workflows.infra import tracing
from workflows.steps.base import StepContext, StepError, StepKind
from workflows.steps.registry import register
from workflows.steps.sending import (
    DESTINATION_SCHEMA,
    EVENT_PROPERTIES,
    secret_destination_problems,
    send_event,
)

MAX_DESTINATIONS = 16


@register
class EmitEvent(StepKind):
    name = "emit_event"
    title = "Emit event"
    description = (
        "Publish a CloudEvent on the bus (correlation and causation kept); optionally send "
        "it to broker connections or HTTP endpoints too."
    )
    icon = "send"
    group = "actions"
    side_effects = True
    config_schema = {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            **EVENT_PROPERTIES,
            "to": {
                "type": "array",
                "maxItems": MAX_DESTINATIONS,
                "items": DESTINATION_SCHEMA,
                "description": "also send the stored event to these destinations, each as "
                "a publish step's: {connection, target} or {url, headers}, with mode and "
                "timeout_seconds",
            },
        },
    }
    # HTTP headers of a `url` destination leave with the request and are never stored.
    secret_fields = ("/to/*/headers/*",)

    def secret_destination_problems(self, config):
        problems = []
        for index, destination in enumerate(config.get("to") or []):
            if isinstance(destination, dict) and destination.get("headers"):
                problems += secret_destination_problems(self, destination, f"/to/{index}")
        return problems

    def execute(self, config, ctx: StepContext):
        if ctx.emit is None:
            raise StepError("emit_event needs the bus, which this context does not provide")
        config = event_attributes(config, "emit_event")
        from workflows.events.envelope import InvalidEvent, SchemaViolation

        try:
            # Its span is the emitted event's trace context (traceparent extension).
            with tracing.emitting(config["type"]):
                output = ctx.emit(config)
        except InvalidEvent as exc:  # a rendered attribute too long, a source with spaces
            raise StepError(f"emit_event: invalid event: {exc}", code="invalid_event") from exc
        except SchemaViolation as exc:
            # Retrying cannot fix the data: fail now, naming the schema's complaints.
            raise StepError(f"the event breaks its type's schema: {exc}", code="schema") from exc
        destinations = config.get("to") or []
        if destinations:
            output = {**output, "sent": send_everywhere(destinations, output["id"], ctx)}
        return output


def send_everywhere(destinations: list[dict], event_id: int, ctx: StepContext) -> list[dict]:
    """Send the stored event to every destination not confirmed by an earlier attempt; the
    receipts in order. Tries them all, then raises the first failure (retryable only when
    every failure is: one a retry cannot fix fails the step now)."""
    if ctx.stored_event is None:
        raise StepError("emit_event needs the services, which this context does not provide")
    envelope = ctx.stored_event(event_id)
    done = ctx.checkpoints.done() if ctx.checkpoints is not None else {}
    receipts: list = [None] * len(destinations)
    failures: list[tuple[int, StepError]] = []
    for index, destination in enumerate(destinations):
        if index in done:
            receipts[index] = done[index]
            continue
        try:
            receipts[index] = send_event(destination, envelope, ctx, kind="emit_event")
        except StepError as exc:
            failures.append((index, exc))
            continue
        if ctx.checkpoints is not None:
            ctx.checkpoints.record(index, receipts[index])
    if failures:
        index, first = failures[0]
        where = destinations[index].get("connection") or destinations[index].get("url")
        more = f" (and {len(failures) - 1} more destination(s))" if len(failures) > 1 else ""
        afters = [e.retry_after for _i, e in failures if e.retry_after is not None]
        raise StepError(
            f"emit_event: the event is stored, but to[{index}] ({where}) failed: {first}{more}",
            retryable=all(e.retryable for _i, e in failures),
            retry_after=max(afters) if afters else None,
            code=first.code,
        )
    return receipts


def event_attributes(config: dict, kind: str) -> dict:
    """A rendered config whose CloudEvent attributes are strings (templates may give a number
    or nothing); refuses an empty type. Shared by the steps that send events."""
    config = dict(config)
    for field in ("type", "subject", "source", "partitionkey"):
        if field in config:
            config[field] = "" if config[field] is None else str(config[field])
    if not config["type"].strip():
        raise StepError(f"{kind}: the event type rendered to an empty string", code="invalid_event")
    return config
