"""Expression limits hold on every thread: time, the size of any value built on the way,
and the size of the result; and no hostile input makes the layer raise anything but
ExpressionError (hypothesis drives it with sizes, encodings and odd values).

Before, the time limit was a signal timer that only the main thread can have: an expression
in a for_each item thread ran unbounded, and `+` or `%` could build a string of any size.
"""

from __future__ import annotations

import math
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_expressions import CONTEXT, plain_json
from workflows.core import cel_runtime
from workflows.core.cel_runtime import MAX_LIST_ITEMS, MAX_STRING_BYTES
from workflows.core.expressions import (
    MAX_OUTPUT_BYTES,
    MAX_RENDERED_BYTES,
    TIME_LIMIT_SECONDS,
    ExpressionError,
    check,
    evaluate,
    render,
    render_value,
)
from workflows.steps.base import StepContext
from workflows.steps.for_each import ForEach

# Nested comprehensions are quadratic; over 200 items cel-python needs ~30 s for this.
SLOW = "event.data.items.map(a, event.data.items.map(b, a * b)).size()"
SLOW_CONTEXT = {"event": {"data": {"items": list(range(200))}}}


def outcome_on_a_thread(function, timeout: float = 20) -> BaseException | object:
    """Run `function` on a new thread; its exception or value (the thread must finish)."""
    box: list = []

    def target():
        try:
            box.append(function())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the expression ran on past the limit"
    return box[0]


# --- time ---------------------------------------------------------------------------------------
def test_a_slow_expression_is_stopped_at_the_time_limit_on_another_thread():
    started = time.monotonic()
    outcome = outcome_on_a_thread(lambda: evaluate(SLOW, SLOW_CONTEXT, where="step crunch"))

    assert isinstance(outcome, ExpressionError)
    assert f"took longer than {TIME_LIMIT_SECONDS}s" in str(outcome)
    assert time.monotonic() - started < 20


def test_slow_expressions_in_a_thread_pool_are_each_stopped():
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(evaluate, SLOW, SLOW_CONTEXT) for _ in range(3)]
        for future in futures:
            with pytest.raises(ExpressionError, match="took longer than"):
                future.result(timeout=30)


def test_a_for_each_items_slow_template_is_stopped_in_its_item_thread():
    ctx = StepContext(
        run_id=1,
        step_id="loop",
        attempt=1,
        idempotency_key="k",
        event=SLOW_CONTEXT["event"],
        steps={},
    )
    config = {
        "items": "[1, 2]",
        "concurrency": 2,
        "do": {"kind": "transform", "config": {"output": {"n": "{{ " + SLOW + " }}"}}},
    }

    outcome = outcome_on_a_thread(lambda: ForEach().execute(config, ctx), timeout=30)

    assert isinstance(outcome, Exception), outcome
    assert "took longer than" in str(outcome)


def test_the_time_limit_counts_only_the_evaluating_threads_own_cpu_time():
    # Another thread of the process (or the machine) being busy spends nothing of this
    # evaluation's budget: a process-wide or wall clock would have.
    burned = threading.Event()

    def burn_elsewhere():
        started = time.thread_time()
        while time.thread_time() - started < 0.3:
            pass
        burned.set()

    def evaluation_thread():
        budget = cel_runtime.Budget(0.05)
        threading.Thread(target=burn_elsewhere, daemon=True).start()
        assert burned.wait(30), "the other thread did not finish burning"
        for _ in range(10 * 64):  # several looks at the clock
            budget.tick()
        return "within budget"

    assert outcome_on_a_thread(evaluation_thread, timeout=40) == "within budget"


# --- size of what is built on the way -------------------------------------------------------------
def peak_bytes(function) -> tuple[BaseException | object, int]:
    tracemalloc.start()
    try:
        try:
            outcome = function()
        except ExpressionError as exc:
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_doubling_a_string_stops_at_the_intermediate_limit_not_at_hundreds_of_megabytes():
    # 64 KiB doubled 12 times would be 256 MiB, built cheaply in a dozen nodes.
    context = {"event": {"data": {"s": "x" * 65536}}}
    expression = "[event.data.s]" + ".map(a, a + a)" * 12 + ".size()"

    outcome, peak = peak_bytes(lambda: evaluate(expression, context))

    assert isinstance(outcome, ExpressionError)
    assert f"over {MAX_STRING_BYTES} characters" in outcome.message
    assert peak < 16 * MAX_STRING_BYTES


def test_doubling_a_list_stops_at_the_item_limit():
    context = {"event": {"data": {"l": list(range(1000))}}}
    expression = "[event.data.l]" + ".map(a, a + a)" * 12 + ".size()"

    outcome, peak = peak_bytes(lambda: evaluate(expression, context))

    assert isinstance(outcome, ExpressionError)
    assert f"over {MAX_LIST_ITEMS} items" in outcome.message
    assert peak < 64 * 1024 * 1024


def test_string_formatting_cannot_build_a_big_string():
    outcome, peak = peak_bytes(lambda: evaluate("size('%0200000000d' % 1)", {}))

    assert isinstance(outcome, ExpressionError)
    assert peak < 1024 * 1024


def test_a_result_of_many_references_to_one_big_string_is_stopped_while_converting():
    # 300 references to one 1 MiB string are cheap to hold; written out they are 300 MiB.
    context = {"event": {"data": {"big": "y" * (1024 * 1024), "items": list(range(300))}}}

    outcome, peak = peak_bytes(lambda: evaluate("event.data.items.map(i, event.data.big)", context))

    assert isinstance(outcome, ExpressionError)
    assert f"over {MAX_OUTPUT_BYTES} bytes" in outcome.message
    assert peak < 16 * 1024 * 1024


# --- hostile input -------------------------------------------------------------------------------
def json_values(max_leaves: int = 30):
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=40)
        | st.sampled_from(["x" * 70_000, "\x00", "\ud800", "é" * 100, "{{ secrets.x }}"])
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=max_leaves,
    )


PROBES = [
    "event.data",
    "event.data.a",
    "event.data.a + event.data.b",
    "event.data.a * 2",
    "event.data.a[0]",
    "event.data.a[-1]",
    "size(event.data.a)",
    "string(event.data.a)",
    "int(event.data.a)",
    "double(event.data.a)",
    "event.data.a.map(x, x + x)",
    "event.data.a.filter(x, x > 1)",
    "event.data.a.exists(x, x == event.data.b)",
    "event.data.a == event.data.b",
    "event.data.a < event.data.b",
    "event.data.a in event.data.b",
    "event.data.a && event.data.b",
    "event.data.a ? 1 : 2",
    "event.data.a.matches(event.data.b)",
    "has(event.data.a.b)",
    "'%s' % event.data.a",
    "[event.data.a, event.data.b].map(x, [x, x, x])",
]


def check_result(value) -> None:
    assert plain_json(value)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


HOSTILE = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


@HOSTILE
@given(a=json_values(), b=json_values(), probe=st.sampled_from(PROBES))
def test_hostile_data_gives_plain_json_or_an_expression_error(a, b, probe):
    try:
        value = evaluate(probe, {"event": {"data": {"a": a, "b": b}}})
    except ExpressionError as exc:
        assert exc.message and len(exc.message) <= 400
        return
    check_result(value)


CEL_PIECES = [
    "1", "1u", "-1", "9223372036854775807", "1.5", "1e308", "'a'", "b'\\xff'", "true", "null",
    "[", "]", "{", "}", "(", ")", ",", ":", ".", "?", "+", "-", "*", "/", "%", "!", "&&", "||",
    "==", "<", "in", "size", "string", "int", "type", "has", "map", "filter", "x", "event",
    "event.data", "'%s'", "\\", "'\\u0000'", "'é'", "__class__", "dyn",
]  # fmt: skip


@HOSTILE
@given(pieces=st.lists(st.sampled_from(CEL_PIECES), min_size=1, max_size=25))
def test_hostile_expression_text_compiles_or_is_refused_with_an_expression_error(pieces):
    expression = " ".join(pieces)
    try:
        check(expression)
        value = evaluate(expression, CONTEXT)
    except ExpressionError:
        return
    check_result(value)


@HOSTILE
@given(text=st.text(max_size=200), data=json_values(10))
def test_hostile_template_text_renders_or_is_refused_with_an_expression_error(text, data):
    context = {**CONTEXT, "event": {"data": data}}
    for template in (text, "{{ " + text + " }}", "a {{ event.data }} " + text):
        try:
            rendered = render_value({"t": [template]}, context)
            render(template, context)
        except ExpressionError:
            continue
        check_result(rendered)


# --- rendered text and configs ------------------------------------------------------------------
def test_a_text_of_many_templates_stops_at_the_limit_while_it_grows():
    # 1,000 templates of 200 KB each would be 200 MB of text before a check at the end.
    context = {"event": {"data": {"chunk": "z" * 200_000}}}
    text = "{{ event.data.chunk }}," * 1000

    outcome, peak = peak_bytes(lambda: render(text, context))

    assert isinstance(outcome, ExpressionError)
    assert f"rendered text is over {MAX_OUTPUT_BYTES} bytes" in outcome.message
    assert peak < 8 * 1024 * 1024


def test_a_config_rendering_to_more_than_the_limit_altogether_is_refused():
    # Each field is within the result limit; together they are not.
    context = {"event": {"data": {"chunk": "z" * 200_000}}}
    config = {f"field{n}": "{{ event.data.chunk }}" for n in range(10)}

    with pytest.raises(ExpressionError, match=f"over {MAX_RENDERED_BYTES} bytes"):
        render_value(config, context)
    assert render_value(dict(list(config.items())[:5]), context)["field4"] == "z" * 200_000


def test_comparing_large_maps_takes_time_in_proportion_to_their_size():
    # Comparing every key with every key would be 10^8 comparisons in our own loop, where
    # the interpreter's budget is not looked at.
    keys = {f"k{n}": n for n in range(10_000)}
    context = {"event": {"data": {"a": keys, "b": dict(keys)}}}

    outcome = outcome_on_a_thread(
        lambda: evaluate("event.data.a == event.data.b && 'k9999' in event.data.a", context),
        timeout=20,
    )

    assert outcome is True
