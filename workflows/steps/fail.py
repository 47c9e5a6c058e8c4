"""`fail`: stop the run with an error (or follow a `failure` edge)."""

from __future__ import annotations

from .base import StepContext, StepError, StepKind
from .registry import register


@register
class Fail(StepKind):
    name = "fail"
    title = "Fail"
    description = "Stop with an error message."
    icon = "x-octagon"
    group = "flow"
    config_schema = {
        "type": "object",
        "required": ["message"],
        "additionalProperties": False,
        "properties": {"message": {"type": "string", "maxLength": 2000}},
    }

    def ports(self, config):
        return []  # only "failure" leaves a fail step

    def execute(self, config, ctx: StepContext):
        raise StepError(config["message"], retryable=False, code="fail")
