"""Step functions the tests register for the `python` step, as an operator would in code.

Imported by the `python` step when SIGNALBOX_PYTHON_MODULES names this module."""

from __future__ import annotations

from workflows.steps.base import StepError
from workflows.steps.python import step_function


@step_function("tests.total")
def total(input, ctx):
    """Sum the order lines; shows input, context and a JSON result."""
    lines = input["lines"]
    return {
        "total": sum(line["price"] * line["qty"] for line in lines),
        "lines": len(lines),
        "run": ctx.run_id,
        "key": ctx.idempotency_key,
    }


@step_function("tests.unavailable")
def unavailable(input, ctx):
    raise StepError("the warehouse is closed", retryable=True, retry_after=5, code="warehouse")


@step_function("tests.broken")
def broken(input, ctx):
    return {"ratio": 1 / input["zero"]}


@step_function("tests.not_json")
def not_json(input, ctx):
    return {"when": object()}


@step_function("tests.not_a_number")
def not_a_number(input, ctx):
    """JSON, to Python's encoder; not to JSON itself or to PostgreSQL's jsonb."""
    return {"ratio": float("nan")}


@step_function("tests.secret_length")
def secret_length(input, ctx):
    """Uses an argument marked secret without returning it."""
    return {"length": len(ctx.secret_input["key"]), "named": sorted(ctx.secrets)}


@step_function("tests.leaky")
def leaky(input, ctx):
    """Careless operator code: hands back its secret argument encoded. The stored output
    must still not hold it (the services' last guard masks the encodings too)."""
    import base64
    from urllib.parse import quote

    value = ctx.secret_input["key"]
    return {
        "b64": base64.b64encode(value.encode()).decode(),
        "hex": value.encode().hex(),
        "url": quote(value, safe=""),
    }
