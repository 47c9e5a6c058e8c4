"""`python`: call a function the operator registered in code.

Never code typed in the UI: the config names a function; the function is registered with
`@step_function("name")` in a module the operator lists in SIGNALBOX_PYTHON_MODULES.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from .base import StepContext, StepError, StepKind
from .registry import register

_FUNCTIONS: dict[str, Callable[[Any, StepContext], Any]] = {}


def step_function(name: str):
    """Register `fn(input, ctx) -> JSON` under `name` for the `python` step."""

    def decorator(fn):
        if name in _FUNCTIONS and _FUNCTIONS[name] is not fn:
            raise ValueError(f"python step function {name!r} is registered twice")
        _FUNCTIONS[name] = fn
        return fn

    return decorator


def registered_functions() -> dict[str, Callable]:
    for module in filter(None, os.environ.get("SIGNALBOX_PYTHON_MODULES", "").split(",")):
        importlib.import_module(module.strip())
    return dict(_FUNCTIONS)


@register
class Python(StepKind):
    name = "python"
    title = "Python function"
    description = "Call a function an operator registered in code (not code typed here)."
    icon = "code"
    group = "actions"
    side_effects = True
    config_schema = {
        "type": "object",
        "required": ["function"],
        "additionalProperties": False,
        "properties": {
            "function": {"type": "string", "pattern": "^[A-Za-z_][\\w.]*$"},
            "input": {},
        },
    }

    def execute(self, config, ctx: StepContext):
        functions = registered_functions()
        fn = functions.get(config["function"])
        if fn is None:
            known = ", ".join(sorted(functions)) or "none"
            raise StepError(f"no python step function {config['function']!r} (registered: {known})")
        return fn(config.get("input"), ctx)
