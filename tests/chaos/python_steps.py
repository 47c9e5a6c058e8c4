"""Poison for the fault suite, registered for the `python` step as an operator would
(SIGNALBOX_PYTHON_MODULES names this module in the chaos stack's environment)."""

from __future__ import annotations

import os

from workflows.steps.python import step_function


@step_function("chaos.not_a_number")
def not_a_number(input, ctx):
    """A result that cannot be stored: JSON has no NaN, and PostgreSQL's jsonb refuses it."""
    return {"ratio": float("nan"), "n": (input or {}).get("n")}


@step_function("chaos.crash_worker")
def crash_worker(input, ctx):
    """Takes its worker process down, every time it runs."""
    os._exit(70)
