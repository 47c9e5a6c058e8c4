"""`log`: write a message to the worker's log and pass it on as output."""

from __future__ import annotations

import logging

from workflows.core.secret_places import encodings
from workflows.steps.base import StepContext, StepKind
from workflows.steps.registry import register

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
MASK = "••••••"


def masked(text: str, secrets) -> str:
    """`text` with the plaintext of every secret replaced: worker logs are not masked
    later, unlike the run's stored output."""
    forms = {form for v in secrets.values() if len(v) >= 4 for form in encodings(v)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


@register
class Log(StepKind):
    name = "log"
    light = True
    title = "Log"
    description = "Write a message to the run's log."
    icon = "file-text"
    group = "utility"
    config_schema = {
        "type": "object",
        "required": ["message"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string", "maxLength": 10000},
            "level": {"enum": list(LEVELS), "default": "info"},
        },
    }

    def execute(self, config, ctx: StepContext):
        # A whole-string `{{ … }}` may render to a number or an object: log it as text.
        message = config["message"]
        text = message if isinstance(message, str) else repr(message)
        level = LEVELS[config.get("level", "info")]
        ctx.logger.log(
            level, "run %s step %s: %s", ctx.run_id, ctx.step_id, masked(text, ctx.secrets)
        )
        return {"message": message}
