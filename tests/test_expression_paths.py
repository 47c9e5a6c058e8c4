"""A plain path (`event.data.order`, `run.id`) is read straight from the JSON when CEL would
give the very same value (workflows.core.expressions._plain_lookup): most templates are
such paths, and CEL's interpreter took ~0.4 ms for each. These tests hold the shortcut to
CEL itself: for generated JSON and paths, the answer (value, type and size) or the error
message is the same with the shortcut as without it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workflows.core import expressions
from workflows.core.expressions import ExpressionError

KEYS = st.sampled_from(["a", "b", "order", "id", "data", "x_1", "é"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["\x00", "a\ud800b", "plain"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(KEYS, inner, min_size=1, max_size=4),
        # Built in Python, not parsed: CEL refuses a map with a key that is not a string.
        st.dictionaries(st.integers(0, 3), inner, min_size=1, max_size=2),
    ),
    max_leaves=12,
)
ROOT_NAMES = st.sampled_from(["event", "run", "steps", "vars", "item", "nothing"])


def answer(expression: str, context: dict, *, shortcut: bool, monkeypatch) -> tuple:
    if not shortcut:
        monkeypatch.setattr(expressions, "_plain_lookup", lambda names, ctx: (False, None))
    try:
        value, size = expressions._evaluate(expression, context)
    except ExpressionError as exc:
        return ("error", exc.message)
    finally:
        monkeypatch.undo()
    return ("value", type(value), _comparable(value), size)


def _comparable(value):
    # NaN never equals itself; a shortcut never answers one (CEL's answer is an error).
    return "nan" if isinstance(value, float) and math.isnan(value) else value


def same_answers(expression: str, context: dict) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        via_cel = answer(expression, context, shortcut=False, monkeypatch=monkeypatch)
        quick = answer(expression, context, shortcut=True, monkeypatch=monkeypatch)
    assert quick == via_cel, expression


@settings(max_examples=500, deadline=None)
@given(
    root=ROOT_NAMES,
    value=st.one_of(st.dictionaries(KEYS, JSON, min_size=1, max_size=4), JSON),
    data=st.data(),
)
def test_a_path_answers_as_cel_answers(root, value, data):
    context = {"event": {"data": {"order": 7}}, "run": {"id": 3}}
    if root != "nothing":
        context[root] = value
    # Mostly down keys that are there, to a leaf (the shortcut's case); sometimes any key.
    path, node = [], value
    while len(path) < 4:
        names = [k for k in node if isinstance(k, str)] if isinstance(node, dict) else []
        step = data.draw(st.sampled_from(["down"] * 8 + ["stop", "any key"]))
        if step == "down" and names:
            name = data.draw(st.sampled_from(sorted(names)))
            path.append(name)
            node = node[name]
            continue
        if step == "any key":
            path.append(data.draw(KEYS))
        break
    same_answers(".".join([root, *path]), context)


@pytest.mark.parametrize(
    "expression, context",
    [
        ("run.id", {"run": {"id": 42}}),
        ("event.data.order", {"event": {"data": {"order": "A-1"}}}),
        ("event . data . order", {"event": {"data": {"order": 1.5}}}),
        ("event.data.missing", {"event": {"data": {"order": 1}}}),
        ("event.data.big", {"event": {"data": {"big": 2**64}}}),
        ("event.data.nan", {"event": {"data": {"nan": float("nan")}}}),
        ("event.data.nul", {"event": {"data": {"nul": "a\x00b"}}}),
        ("event.data.long", {"event": {"data": {"long": "x" * (300 * 1024)}}}),
        ("event.data.list", {"event": {"data": {"list": [1, 2]}}}),
        ("event.data.map", {"event": {"data": {"map": {"a": 1}}}}),
        ("event.data.a", {"event": {"data": {"a": 1, 5: "int key"}}}),
        ("vars.flag", {"vars": {"flag": True}, "event": {}}),
        ("item", {"item": None}),
        ("item", {}),
        ("event", {"event": "a string root"}),
        ("event.data", {"event": "a string root"}),
    ],
)
def test_chosen_paths_answer_as_cel_answers(expression, context):
    same_answers(expression, context)


def test_the_shortcut_answers_a_plain_path_without_cel(monkeypatch):
    def no_cel(*args, **kwargs):
        raise AssertionError("CEL ran")

    monkeypatch.setattr(expressions.cel_runtime, "run", no_cel)

    assert expressions.render("{{ event.data.order }}", {"event": {"data": {"order": 5}}}) == 5
    assert expressions.render("run {{ run.id }}", {"run": {"id": 9}}) == "run 9"


def test_an_expression_binds_only_the_roots_it_names(monkeypatch):
    converted = []
    real = expressions.cel_values.to_cel
    monkeypatch.setattr(
        expressions.cel_values,
        "to_cel",
        lambda value, root="": converted.append(root) or real(value, root),
    )

    assert expressions.evaluate("run.id + 1", {"run": {"id": 1}, "event": {"data": {}}}) == 2
    assert converted == ["run"]
