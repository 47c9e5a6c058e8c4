"""`emit_event`: publish a CloudEvent to the bus, caused by this run."""

from __future__ import annotations

from .base import StepContext, StepError, StepKind
from .registry import register


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
            "source": {"type": "string", "maxLength": 1024},
            "data": {},
            "partitionkey": {"type": "string", "maxLength": 255},
        },
    }

    def execute(self, config, ctx: StepContext):
        if ctx.emit is None:
            raise StepError("emit_event needs the bus, which this context does not provide")
        return ctx.emit(dict(config))
