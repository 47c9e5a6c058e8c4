"""`python`: call a function the operator registered in code.

Never code typed in the UI: the config only names a function; the function is registered
with `@step_function("name")` in a module the operator lists in SIGNALBOX_PYTHON_MODULES
(comma-separated dotted module paths, imported by the worker). The name cannot be a
template, so run data cannot choose which function runs.

A function takes `(input, ctx)` and returns JSON. Secrets reach it only through the config's
`secret_input` (arguments marked secret), as `ctx.secret_input`; `ctx.secrets` holds the
secrets those arguments name. It may raise StepError to choose whether
the attempt is retried; any other exception fails the attempt (code "python.error").
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from workflows.steps.base import StepContext, StepError, StepKind
from workflows.steps.registry import register

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
    """The registered functions, after importing the modules SIGNALBOX_PYTHON_MODULES names."""
    for module in filter(None, os.environ.get("SIGNALBOX_PYTHON_MODULES", "").split(",")):
        try:
            importlib.import_module(module.strip())
        except ImportError as exc:
            raise StepError(
                f"cannot import python step module {module.strip()!r} "
                f"(SIGNALBOX_PYTHON_MODULES): {exc}",
                code="python.import",
            ) from exc
    return dict(_FUNCTIONS)


@register
class Python(StepKind):
    name = "python"
    title = "Python function"
    description = "Call a function an operator registered in code (not code typed here)."
    icon = "code"
    group = "actions"
    side_effects = True
    reads_whole_context = True  # the function gets the context, not just what it names
    config_schema = {
        "type": "object",
        "required": ["function"],
        "additionalProperties": False,
        "properties": {
            "function": {
                "type": "string",
                "pattern": "^[A-Za-z_][\\w.]*$",
                "maxLength": 200,
                "description": "the name a function was registered under with @step_function",
            },
            "input": {"description": "any JSON; {{ … }} inside strings"},
            "secret_input": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": 'arguments marked secret, e.g. {"api_key": '
                '"{{ secrets.stripe }}"}; the function reads ctx.secret_input',
            },
        },
    }
    # Arguments marked secret reach the function as ctx.secret_input and are never stored;
    # `input` is stored with the step, so it may not hold a secret.
    secret_fields = ("/secret_input/*",)

    def execute(self, config, ctx: StepContext):
        functions = registered_functions()
        name = config["function"]
        fn = functions.get(name)
        if fn is None:
            known = ", ".join(sorted(functions)) or "none"
            raise StepError(
                f"no python step function {name!r} (registered: {known})", code="python.unknown"
            )
        ctx = replace(ctx, secret_input=dict(config.get("secret_input") or {}))
        try:
            output = fn(config.get("input"), ctx)
        except StepError:
            raise
        except Exception as exc:  # the operator's code failed: say where, keep the worker
            raise StepError(
                f"python step function {name!r} raised {type(exc).__name__}: {exc}",
                code="python.error",
            ) from exc
        try:
            json.dumps(output, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StepError(
                f"python step function {name!r} returned something that is not JSON: {exc}",
                code="python.output",
            ) from exc
        return output
