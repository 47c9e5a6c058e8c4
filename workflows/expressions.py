"""The one expression language: CEL over plain JSON, with `{{ … }}` interpolation.

Safe by construction: CEL has no access to Python objects, attributes, imports or I/O; it
only reads the JSON values it is given (`event`, `steps`, `run`, `vars`, `secrets`). It has
no unbounded loops; on top of that we bound expression length, evaluation time (where a
timer can be set) and output size. No user text is ever evaluated as Python or Jinja.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import signal
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import celpy
from celpy import celtypes

MAX_EXPRESSION_CHARS = 2000
MAX_OUTPUT_BYTES = 256 * 1024
TIME_LIMIT_SECONDS = 0.5
TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
ROOTS = ("event", "trigger", "steps", "run", "vars", "secrets", "item", "index")

_env = celpy.Environment()


class ExpressionError(Exception):
    """An expression failed to compile or evaluate; says which one and where."""

    def __init__(self, expression: str, message: str, *, where: str = ""):
        self.expression, self.message, self.where = expression, message, where
        location = f" in {where}" if where else ""
        super().__init__(f"expression {expression!r}{location}: {message}")


@functools.lru_cache(maxsize=2048)
def _program(expression: str):
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(expression[:60] + "…", f"longer than {MAX_EXPRESSION_CHARS} chars")
    try:
        return _env.program(_env.compile(expression))
    except celpy.CELParseError as exc:
        raise ExpressionError(expression, f"syntax error: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check(expression: str, *, where: str = "") -> None:
    """Compile only; raise ExpressionError for invalid syntax (used by validation)."""
    try:
        _program(expression.strip())
    except ExpressionError as exc:
        raise ExpressionError(exc.expression, exc.message, where=where) from None


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    # Signal handlers only run in the main thread (a Celery prefork worker runs tasks there);
    # elsewhere CEL's lack of unbounded loops and our input limits are the bound.
    # CPU time (ITIMER_VIRTUAL), not wall time: on a busy machine a cheap expression can
    # wait longer than the limit for a CPU, and must not fail for it.
    state = {"fired": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    active = True

    def expire(_signum, _frame):
        if active:
            # Remembered too: cel-python may catch the exception mid-evaluation and report
            # some other error instead; the caller still knows the limit was hit.
            state["fired"] = True
            raise _Timeout

    previous = signal.signal(signal.SIGVTALRM, expire)
    # Repeating: a _Timeout raised while Python runs a finalizer (a __del__, a ResourceWarning
    # of a collected socket) is swallowed there, so the next tick raises it again.
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds, 0.05)
    try:
        yield state
    finally:
        active = False
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def bind(context: Mapping[str, Any]) -> dict[str, Any]:
    """`context`'s roots as CEL values: pass it as `bound` to evaluate several expressions
    over one context without converting the context again for each (the trigger filters
    of every workflow listening to an event's type)."""
    return {name: celpy.json_to_cel(context.get(name)) for name in ROOTS if name in context}


def evaluate(
    expression: str,
    context: Mapping[str, Any],
    *,
    where: str = "",
    bound: Mapping[str, Any] | None = None,
) -> Any:
    """Evaluate one CEL expression over `context`; return plain JSON. `bound` is
    `bind(context)`, when the caller keeps it for several expressions."""
    expression = expression.strip()
    try:
        program = _program(expression)
    except ExpressionError as exc:
        raise ExpressionError(exc.expression, exc.message, where=where) from None
    activation = dict(bound) if bound is not None else bind(context)
    timed_out = ExpressionError(expression, f"took longer than {TIME_LIMIT_SECONDS}s", where=where)
    limit: dict = {"fired": False}
    try:
        with _time_limit(TIME_LIMIT_SECONDS) as limit:
            result = program.evaluate(activation)
    except _Timeout:
        raise timed_out from None
    except celpy.CELEvalError as exc:
        if limit["fired"]:
            raise timed_out from None
        raise ExpressionError(
            expression, _scrub(_eval_message(exc), context), where=where
        ) from None
    except (RecursionError, MemoryError, ValueError, TypeError, ArithmeticError) as exc:
        if limit["fired"]:
            raise timed_out from None
        raise ExpressionError(
            expression, _scrub(f"{type(exc).__name__}: {exc}", context), where=where
        ) from None
    if limit["fired"]:
        raise timed_out
    if isinstance(result, celpy.CELEvalError):
        raise ExpressionError(expression, _scrub(_eval_message(result), context), where=where)
    value = to_json(result)
    size = len(json.dumps(value, default=str))
    if size > MAX_OUTPUT_BYTES:
        raise ExpressionError(
            expression, f"result is {size} bytes, over {MAX_OUTPUT_BYTES}", where=where
        )
    return value


def _scrub(message: str, context: Mapping[str, Any]) -> str:
    # Some celpy errors quote the value they failed on (`secrets.token.x` quotes the token).
    secrets = context.get("secrets") or {}
    for plain in sorted(
        (v for v in secrets.values() if isinstance(v, str) and len(v) >= 4), key=len, reverse=True
    ):
        message = message.replace(plain, "••••••")
    return message


def _eval_message(exc: Exception) -> str:
    args = getattr(exc, "args", ())
    message = args[0] if args and isinstance(args[0], str) else _first_line(exc)
    # celpy appends a dump of the whole activation to some errors; it may hold secrets.
    message = message.split(" (in activation", 1)[0]
    return message if len(message) <= 300 else message[:300] + "…"


def to_json(value: Any) -> Any:
    """CEL values back to plain JSON types."""
    if value is None or isinstance(value, celtypes.NullType):
        return None
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, (celtypes.IntType, celtypes.UintType)):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.BytesType):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (celtypes.TimestampType, datetime)):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (celtypes.DurationType, timedelta)):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(to_json(k)): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, type):  # `type(x)` gives a celpy class: answer with its CEL name
        return _CEL_TYPE_NAMES.get(value, "type")
    return str(value)


_CEL_TYPE_NAMES = {
    celtypes.BoolType: "bool",
    celtypes.IntType: "int",
    celtypes.UintType: "uint",
    celtypes.DoubleType: "double",
    celtypes.StringType: "string",
    celtypes.BytesType: "bytes",
    celtypes.ListType: "list",
    celtypes.MapType: "map",
    celtypes.NullType: "null_type",
    celtypes.TimestampType: "google.protobuf.Timestamp",
    celtypes.DurationType: "google.protobuf.Duration",
    celtypes.TypeType: "type",
}


def is_template(text: str) -> bool:
    return isinstance(text, str) and "{{" in text


def render(text: str, context: Mapping[str, Any], *, where: str = "") -> Any:
    """Interpolate `{{ expr }}` in a string. A string that is exactly one `{{ expr }}`
    yields the value itself (a number stays a number); otherwise values are stringified
    (objects and lists as JSON)."""
    if not is_template(text):
        return text
    whole = TEMPLATE.fullmatch(text.strip())
    if whole and text.strip().count("{{") == 1:
        return evaluate(whole.group(1), context, where=where)

    def substitute(match: re.Match) -> str:
        value = evaluate(match.group(1), context, where=where)
        if isinstance(value, str):
            return value
        return json.dumps(value, separators=(",", ":"))

    rendered = TEMPLATE.sub(substitute, text)
    if len(rendered) > MAX_OUTPUT_BYTES:
        raise ExpressionError(
            text[:60], f"rendered text is over {MAX_OUTPUT_BYTES} bytes", where=where
        )
    return rendered


def render_value(value: Any, context: Mapping[str, Any], *, where: str = "") -> Any:
    """Render every string inside a JSON value (a step's config)."""
    if isinstance(value, str):
        return render(value, context, where=where)
    if isinstance(value, list):
        return [render_value(v, context, where=f"{where}/{i}") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: render_value(v, context, where=f"{where}/{k}") for k, v in value.items()}
    return value


def check_templates(value: Any, *, where: str = "") -> list[tuple[str, str]]:
    """Every invalid `{{ … }}` inside a JSON value, as (path, message)."""
    problems: list[tuple[str, str]] = []
    if isinstance(value, str):
        for match in TEMPLATE.finditer(value):
            try:
                check(match.group(1))
            except ExpressionError as exc:
                problems.append((where or "/", exc.message))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems += check_templates(item, where=f"{where}/{i}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            problems += check_templates(item, where=f"{where}/{key}")
    return problems
