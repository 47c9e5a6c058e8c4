"""Steps that park a run without holding a worker: delay, wait_for_event, sub_workflow.

They return a Wait; the services record it in the database (timers, event waiters, child
runs) and resume the step when it is due.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workflows.steps.base import StepContext, StepError, StepKind, StepResult, Wait
from workflows.steps.registry import register

MAX_DELAY = timedelta(days=365)


@register
class Delay(StepKind):
    name = "delay"
    title = "Delay"
    description = "Wait for a duration, or until a time."
    icon = "clock"
    group = "flow"
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "seconds": {"type": "number", "minimum": 0, "maximum": MAX_DELAY.total_seconds()},
            "until": {"type": "string", "description": "RFC 3339 time; may be {{ … }}"},
        },
        "oneOf": [{"required": ["seconds"]}, {"required": ["until"]}],
    }

    def execute(self, config, ctx: StepContext):
        now = datetime.now(UTC)
        if "seconds" in config:
            until = now + timedelta(seconds=float(config["seconds"]))
        else:
            try:
                until = datetime.fromisoformat(str(config["until"]).replace("Z", "+00:00"))
            except ValueError as exc:
                raise StepError(f"until is not an RFC 3339 time: {config['until']!r}") from exc
            if until.tzinfo is None:
                raise StepError("until needs a time zone offset (e.g. Z)")
        return StepResult(output={"until": until.isoformat()}, wait=Wait("timer", until=until))


@register
class WaitForEvent(StepKind):
    name = "wait_for_event"
    title = "Wait for event"
    description = "Pause until a matching event arrives, or take the timeout port."
    icon = "bell"
    group = "flow"
    expression_fields = ("match",)
    config_schema = {
        "type": "object",
        "required": ["event", "timeout_seconds"],
        "additionalProperties": False,
        "properties": {
            "event": {"type": "string", "minLength": 1},
            "match": {
                "type": "string",
                "description": "CEL over `event` (the arriving one) and this run's data",
            },
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 31536000},
        },
    }

    def ports(self, config):
        return ["success", "timeout"]

    def execute(self, config, ctx: StepContext):
        return StepResult(
            wait=Wait(
                "event",
                event_type=config["event"],
                match=config.get("match", "true"),
                timeout_seconds=float(config["timeout_seconds"]),
            )
        )


@register
class SubWorkflow(StepKind):
    name = "sub_workflow"
    title = "Sub-workflow"
    description = "Start another workflow and wait for its result."
    icon = "layers"
    group = "flow"
    config_schema = {
        "type": "object",
        "required": ["workflow"],
        "additionalProperties": False,
        "properties": {
            "workflow": {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"},
            "input": {"description": "becomes the child run's event data"},
        },
    }

    def execute(self, config, ctx: StepContext):
        return StepResult(
            wait=Wait("child", workflow=config["workflow"], input=config.get("input"))
        )
