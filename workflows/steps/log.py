"""`log`: write a message to the worker's log and pass it on as output."""

from __future__ import annotations

import logging

from .base import StepContext, StepKind
from .registry import register

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


@register
class Log(StepKind):
    name = "log"
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
        level = LEVELS[config.get("level", "info")]
        ctx.logger.log(level, "run %s step %s: %s", ctx.run_id, ctx.step_id, config["message"])
        return {"message": config["message"]}
