"""`fail`: stop the run with an error (or follow a `failure` edge)."""

from __future__ import annotations

from workflows.steps.base import StepContext, StepError, StepKind
from workflows.steps.registry import register


@register
class Fail(StepKind):
    name = "fail"
    light = True
    title = "Fail"
    description = "Stop with an error message."
    icon = "x-octagon"
    group = "flow"
    config_schema = {
        "type": "object",
        "required": ["message"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string", "maxLength": 2000},
            "code": {
                "type": "string",
                "pattern": "^[a-z][a-z0-9_.-]{0,40}$",
                "description": 'error code after "fail.", for retry policies and dead letters',
            },
        },
    }

    def ports(self, config):
        return []  # only "failure" leaves a fail step

    def execute(self, config, ctx: StepContext):
        code = f"fail.{config['code']}" if config.get("code") else "fail"
        raise StepError(str(config["message"]), retryable=False, code=code)
