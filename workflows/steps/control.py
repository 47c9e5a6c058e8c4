"""Flow control: condition, switch and filter choose which edges a run follows."""

from __future__ import annotations

from workflows.core.cel_values import json_kind
from workflows.core.expressions import evaluate
from workflows.steps.base import StepContext, StepError, StepKind, StepResult
from workflows.steps.registry import register


def _truth(expression: str, ctx: StepContext, where: str) -> bool:
    value = evaluate(expression, ctx.expression_context(), where=where)
    if not isinstance(value, bool):
        raise StepError(f"{where}: expression must be true or false, got {json_kind(value)}")
    return value


@register
class Condition(StepKind):
    name = "condition"
    light = True
    title = "If / else"
    description = "Follow the true or the false edge, by a CEL expression."
    icon = "git-branch"
    group = "flow"
    expression_fields = ("expression",)
    config_schema = {
        "type": "object",
        "required": ["expression"],
        "additionalProperties": False,
        "properties": {"expression": {"type": "string", "minLength": 1}},
    }

    def ports(self, config):
        return ["true", "false"]

    def execute(self, config, ctx):
        result = _truth(config["expression"], ctx, f"step {ctx.step_id}")
        return StepResult(output={"result": result}, port="true" if result else "false")


@register
class Switch(StepKind):
    name = "switch"
    light = True
    title = "Switch"
    description = "Follow the first case whose expression is true, else `default`."
    icon = "shuffle"
    group = "flow"
    config_schema = {
        "type": "object",
        "required": ["cases"],
        "additionalProperties": False,
        "properties": {
            "cases": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "when"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,40}$"},
                        "when": {"type": "string", "minLength": 1},
                    },
                },
            }
        },
    }

    def expressions(self, config):
        return [(f"/cases/{i}/when", c["when"]) for i, c in enumerate(config.get("cases", []))]

    def ports(self, config):
        return [case["name"] for case in config.get("cases", [])] + ["default"]

    def execute(self, config, ctx):
        for case in config["cases"]:
            if _truth(case["when"], ctx, f"step {ctx.step_id} case {case['name']}"):
                return StepResult(output={"case": case["name"]}, port=case["name"])
        return StepResult(output={"case": "default"}, port="default")


@register
class Filter(StepKind):
    name = "filter"
    light = True
    title = "Filter"
    description = "Stop this branch quietly unless the expression is true."
    icon = "filter"
    group = "flow"
    expression_fields = ("expression",)
    config_schema = Condition.config_schema

    def execute(self, config, ctx):
        passed = _truth(config["expression"], ctx, f"step {ctx.step_id}")
        # No port when it does not pass: everything downstream is skipped, the run goes on.
        return StepResult(output={"passed": passed}, port="success" if passed else "")
