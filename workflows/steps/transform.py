"""`transform`: build new JSON from expressions."""

from __future__ import annotations

from workflows.steps.base import StepContext, StepKind
from workflows.steps.registry import register


@register
class Transform(StepKind):
    name = "transform"
    light = True
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
        # The services rendered the config's `{{ … }}` already; the output is the result.
        # Rendering it again would evaluate data as a template: an event carrying the text
        # "{{ secrets.token }}" would be turned into the secret.
        return config["output"]
