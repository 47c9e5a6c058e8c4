"""`transform`: build new JSON from expressions."""

from __future__ import annotations

from ..expressions import render_value
from .base import StepContext, StepKind
from .registry import register


@register
class Transform(StepKind):
    name = "transform"
    title = "Transform"
    description = "Build new JSON; strings may hold {{ expressions }} over the run's data."
    icon = "wand"
    group = "data"
    config_schema = {
        "type": "object",
        "required": ["output"],
        "additionalProperties": False,
        "properties": {"output": {"description": "any JSON; {{ … }} inside strings"}},
    }

    def execute(self, config, ctx: StepContext):
        # The services already rendered the config's templates; output is the result.
        return render_value(config["output"], ctx.expression_context())
