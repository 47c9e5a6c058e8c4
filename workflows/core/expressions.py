"""The one expression language: CEL over plain JSON, with `{{ … }}` interpolation.

Safe by construction: CEL has no access to Python objects, attributes, imports or I/O; it
only reads the JSON values it is given (`event`, `steps`, `run`, `vars`, `secrets`). It has
no unbounded loops; on top of that every evaluation is bounded, on whatever thread it runs,
in CPU time, in the size of every value it builds and in the size of its result
(`cel_runtime`), and its result is plain, finite, storable JSON (`cel_values`). No user text
is ever evaluated as Python or Jinja, and no error message shows Python.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

import celpy
from celpy.evaluation import CELEvalError

from workflows.core import cel_runtime, cel_values
from workflows.core.cel_runtime import MAX_LIST_ITEMS, MAX_STRING_BYTES  # noqa: F401 - documented limits

MAX_EXPRESSION_CHARS = 2000
MAX_OUTPUT_BYTES = 256 * 1024
MAX_RENDERED_BYTES = 1024 * 1024  # all the templates of one step's config together
TIME_LIMIT_SECONDS = 0.5
TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
ROOTS = ("event", "trigger", "steps", "run", "vars", "secrets", "item", "index")

log = logging.getLogger(__name__)
_env = celpy.Environment(runner_class=cel_runtime.BoundedRunner)


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
        ast = _env.compile(expression)
    except celpy.CELParseError as exc:
        raise ExpressionError(expression, _syntax_message(exc, expression)) from None
    except RecursionError:
        raise ExpressionError(expression, "syntax error: nested too deeply") from None
    refused = cel_runtime.refused_names(ast)
    if refused:
        raise ExpressionError(expression, f"unknown function `{refused[0]}` (not CEL)")
    return _env.program(ast, functions=cel_runtime.FUNCTIONS)


def _syntax_message(exc: Exception, expression: str) -> str:
    line, column = getattr(exc, "line", None), getattr(exc, "column", None)
    if not isinstance(line, int) or not isinstance(column, int):
        return "syntax error"
    where = f"column {column}" if "\n" not in expression else f"line {line}, column {column}"
    text = expression.splitlines()[line - 1] if 0 < line <= len(expression.splitlines()) else ""
    near = "".join(
        c if c.isprintable() else "\ufffd" for c in text[max(column - 11, 0) : column + 10]
    )
    near = near.strip()
    return f"syntax error at {where}" + (f", near `{near}`" if near else "")


def check(expression: str, *, where: str = "") -> None:
    """Compile only; raise ExpressionError for invalid syntax (used by validation)."""
    try:
        _program(expression.strip())
    except ExpressionError as exc:
        raise ExpressionError(exc.expression, exc.message, where=where) from None


def bind(context: Mapping[str, Any], roots: Collection[str] = ROOTS) -> dict[str, Any]:
    """`context`'s roots as CEL values: pass it as `bound` to evaluate several expressions
    over one context without converting the context again for each (the trigger filters
    of every workflow listening to an event's type). Never raises: a value CEL cannot hold
    becomes an error only for the expressions that read it. `roots`: only these (the
    others would be converted for nothing: see `_named_roots`)."""
    return {name: cel_values.to_cel(context.get(name), name) for name in roots if name in context}


_PATH = re.compile(r"\s*([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*", re.ASCII)


@functools.lru_cache(maxsize=2048)
def _shape(expression: str) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """(the names of a plain path such as `event.data.order`, else None; the roots the
    expression's text names). A root can only be read by its name, so an expression whose
    text never spells it cannot read it: converting it to CEL would be work for nothing
    (the whole event's data, every upstream output), and it is the larger part of
    evaluating a short template. A word in a string literal counts too: a few roots too
    many, never one too few."""
    path = _PATH.fullmatch(expression)
    names = tuple(n.strip() for n in path.group(1).split(".")) if path else None
    roots = frozenset(r for r in ROOTS if re.search(rf"\b{r}\b", expression))
    if names and (names[0] not in ROOTS or len(names) > 32):
        names = None
    return names, roots


def _plain_lookup(names: tuple[str, ...], context: Mapping[str, Any]) -> tuple[bool, Any]:
    """A plain path's value read straight from the JSON, when CEL would give the very same
    value: every map on the way a dict of string keys (CEL refuses a map with any other
    key) and the value a scalar CEL holds and JSON stores as it is. (False, None) for
    anything else (a missing key, a list, an integer beyond 64 bits, NaN, text the
    database cannot store, a map result): then CEL itself evaluates it, and says why."""
    node: Any = context
    for index, name in enumerate(names):
        if type(node) is not dict or (index and not all(type(k) is str for k in node)):
            return False, None
        if name not in node:
            return False, None
        node = node[name]
    kind_of = type(node)
    if node is None or kind_of is bool:
        return True, node
    if kind_of is int:
        return cel_values.INT64_MIN <= node <= cel_values.INT64_MAX, node
    if kind_of is float:
        return math.isfinite(node), node
    if kind_of is str:
        fits = len(node) + 2 <= MAX_OUTPUT_BYTES and not cel_values.UNSTORABLE_TEXT.search(node)
        return fits, node
    return False, None


def evaluate(
    expression: str,
    context: Mapping[str, Any],
    *,
    where: str = "",
    bound: Mapping[str, Any] | None = None,
) -> Any:
    """Evaluate one CEL expression over `context`; return plain JSON. `bound` is
    `bind(context)`, when the caller keeps it for several expressions. Raises only
    ExpressionError."""
    return _evaluate(expression, context, where=where, bound=bound)[0]


def _evaluate(
    expression: str,
    context: Mapping[str, Any],
    *,
    where: str = "",
    bound: Mapping[str, Any] | None = None,
) -> tuple[Any, int]:
    """(the value, the size of its JSON)."""
    expression = expression.strip()
    try:
        program = _program(expression)
    except ExpressionError as exc:
        raise ExpressionError(exc.expression, exc.message, where=where) from None

    def fail(message: str) -> ExpressionError:
        return ExpressionError(expression, _scrub(message, context), where=where)

    path, roots = _shape(expression)
    if path is not None:
        found, value = _plain_lookup(path, context)
        if found:  # what CEL would answer (tests/test_expression_paths.py compares them)
            return value, len(json.dumps(value))
    timed_out = f"took longer than {TIME_LIMIT_SECONDS}s"
    activation = dict(bound) if bound is not None else bind(context, roots)
    try:
        result, fired = cel_runtime.run(program, activation, seconds=TIME_LIMIT_SECONDS)
        if fired:
            raise fail(timed_out)
        if isinstance(result, CELEvalError):
            raise fail(message_of(result))
        value = cel_values.to_json(result, limit=MAX_OUTPUT_BYTES)
    except ExpressionError:
        raise
    except cel_runtime.LimitExceeded:
        raise fail(timed_out) from None
    except CELEvalError as exc:
        raise fail(message_of(exc)) from None
    except cel_values.ValueTooLarge:
        raise fail(f"result is over {MAX_OUTPUT_BYTES} bytes") from None
    except cel_values.NotStorable as exc:
        raise fail(f"result cannot be stored: {exc}") from None
    except RecursionError:
        raise fail("nested too deeply") from None
    except MemoryError:
        raise fail("ran out of memory") from None
    except Exception as exc:
        log.debug("expression %r raised %s", expression, type(exc).__name__, exc_info=True)
        raise fail("could not be evaluated") from None
    size = len(json.dumps(value))
    if size > MAX_OUTPUT_BYTES:
        raise fail(f"result is {size} bytes, over {MAX_OUTPUT_BYTES}")
    return value, size


def _scrub(message: str, context: Mapping[str, Any]) -> str:
    # Messages show no values; this is the second line of defence for a secret's own text.
    secrets = context.get("secrets") or {}
    for plain in sorted(
        (v for v in secrets.values() if isinstance(v, str) and len(v) >= 4), key=len, reverse=True
    ):
        message = message.replace(plain, "••••••")
    return message


_CELPY_MESSAGES = (
    # cel-python's own words, for the errors it raises where we do not intercept.
    ("undeclared reference to ", None),
    ("modulus or divide by zero", "division by zero"),
    ("return error for overflow", "the value is out of range"),
    ("unhashable type", "a map key must be a string, int, uint or bool"),
    ("Duplicate key", "a map literal repeats a key"),
    ("no such overload", "no function or operator for these types"),
    ("found no matching overload", "no function or operator for these types"),
    ("no such key", "no such key in the map"),
    ("invalid_argument", "index out of range"),
    ("match error", "invalid regular expression"),
)


def message_of(exc: BaseException) -> str:
    """What went wrong, in CEL's words: never a Python class, repr or value."""
    text = str(exc.args[0]) if exc.args and isinstance(exc.args[0], str) else ""
    if getattr(exc, "friendly", False):
        return text[:300]
    for prefix, replacement in _CELPY_MESSAGES:
        if text.startswith(prefix):
            if replacement is None:  # keep the name: it is the expression's own text
                name = re.match(r"undeclared reference to '([^']{1,100})'", text)
                return f"undeclared reference to `{name.group(1)}`" if name else "unknown name"
            return replacement
    # Anything else is cel-python's own text: it may quote a Python class, a repr or a value.
    log.debug("cel-python error not translated: %.200r", text)
    return "invalid operation"


def to_json(value: Any) -> Any:
    """CEL values back to plain JSON types (kept for callers; limits as for a result)."""
    return cel_values.to_json(value, limit=MAX_OUTPUT_BYTES)


def is_template(text: str) -> bool:
    return isinstance(text, str) and "{{" in text


def render(
    text: str, context: Mapping[str, Any], *, where: str = "", budget: list[int] | None = None
) -> Any:
    """Interpolate `{{ expr }}` in a string. A string that is exactly one `{{ expr }}`
    yields the value itself (a number stays a number); otherwise values are stringified
    (objects and lists as JSON). `budget` ([bytes left]) is shared by the strings of one
    config (see `render_value`)."""
    if not is_template(text):
        return text
    budget = budget if budget is not None else [MAX_RENDERED_BYTES]
    whole = TEMPLATE.fullmatch(text.strip())
    if whole and text.strip().count("{{") == 1:
        value, size = _evaluate(whole.group(1), context, where=where)
        _spend(budget, size, text, where)
        return value
    total = 0

    def substitute(match: re.Match) -> str:
        nonlocal total
        value, _size = _evaluate(match.group(1), context, where=where)
        piece = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        # Counted as it grows: a text of many templates stops at the limit, not after.
        total += len(piece)
        if total > MAX_OUTPUT_BYTES:
            raise ExpressionError(
                text[:60], f"rendered text is over {MAX_OUTPUT_BYTES} bytes", where=where
            )
        return piece

    rendered = TEMPLATE.sub(substitute, text)
    _spend(budget, len(rendered), text, where)
    return rendered


def _spend(budget: list[int], size: int, text: str, where: str) -> None:
    budget[0] -= size
    if budget[0] < 0:
        raise ExpressionError(
            text[:60], f"the rendered config is over {MAX_RENDERED_BYTES} bytes", where=where
        )


def render_value(
    value: Any, context: Mapping[str, Any], *, where: str = "", budget: list[int] | None = None
) -> Any:
    """Render every string inside a JSON value (a step's config); all of it together may
    render to at most MAX_RENDERED_BYTES (pass one `budget` to share it across calls)."""
    budget = budget if budget is not None else [MAX_RENDERED_BYTES]
    if isinstance(value, str):
        return render(value, context, where=where, budget=budget)
    if isinstance(value, list):
        return [
            render_value(v, context, where=f"{where}/{i}", budget=budget)
            for i, v in enumerate(value)
        ]
    if isinstance(value, Mapping):
        return {
            k: render_value(v, context, where=f"{where}/{k}", budget=budget)
            for k, v in value.items()
        }
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
