"""`emit_event`: publish a CloudEvent to the bus, caused by this run.

The event's id is the attempt's idempotency key (the same on every attempt), so a retried
step emits no second event; it carries the run's correlation id, the triggering event as its
cause, and the trace context (its own span's, when tracing is on). Other workflows' triggers
and waiting steps receive it like any other event.
"""

from __future__ import annotations

from workflows.infra import tracing
from workflows.steps.base import StepContext, StepError, StepKind
from workflows.steps.registry import register


@register
class EmitEvent(StepKind):
    name = "emit_event"
    title = "Emit event"
    description = "Publish a CloudEvent on the bus (correlation and causation kept)."
    icon = "send"
    group = "actions"
    side_effects = True
    config_schema = {
        "type": "object",
        "required": ["type"],
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string", "minLength": 1, "maxLength": 255},
            "subject": {"type": "string", "maxLength": 1024},
            "source": {
                "type": "string",
                "maxLength": 1024,
                "description": "default: /signalbox/runs/<run id>",
            },
            "data": {"description": "any JSON; {{ … }} inside strings"},
            "partitionkey": {"type": "string", "maxLength": 255},
        },
    }

    def execute(self, config, ctx: StepContext):
        if ctx.emit is None:
            raise StepError("emit_event needs the bus, which this context does not provide")
        config = event_attributes(config, "emit_event")
        from workflows.events.envelope import InvalidEvent, SchemaViolation

        try:
            # Its span is the emitted event's trace context (traceparent extension).
            with tracing.emitting(config["type"]):
                return ctx.emit(config)
        except InvalidEvent as exc:  # a rendered attribute too long, a source with spaces
            raise StepError(f"emit_event: invalid event: {exc}", code="invalid_event") from exc
        except SchemaViolation as exc:
            # Retrying cannot fix the data: fail now, naming the schema's complaints.
            raise StepError(f"the event breaks its type's schema: {exc}", code="schema") from exc


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
