"""CEL as the spec says it, where cel-python says otherwise; errors in CEL's words; values
CEL cannot hold (non-finite numbers, integers beyond 64 bits, deep nesting) refused clearly.

Every case here was answered differently before: a negative index read from the end, `%`
formatted strings like Python, `true && 1` gave 1, errors quoted celpy classes and reprs,
an Infinity result reached the database, and a 30-digit integer anywhere in an event broke
every expression over it.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.test_expressions import CONTEXT, PYTHON_REACH, plain_json
from workflows.core.cel_values import MAX_DEPTH
from workflows.core.expressions import ExpressionError, bind, check, evaluate, render


def error_of(expression: str, context=CONTEXT) -> str:
    with pytest.raises(ExpressionError) as caught:
        evaluate(expression, context)
    return caught.value.message


# --- the spec, where cel-python deviated ----------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("[1, 2, 3][-1]", "a list index cannot be negative (CEL counts from the start only)"),
        ("[1, 2, 3][3]", "index out of range (the list has 3 items)"),
        ("'%s' % {'a': 1}", "no operator `%` for string and map"),
        ("'%d' % 3", "no operator `%` for string and int"),
        ("'%0200000000d' % 1", "no operator `%` for string and int"),
        ("true && 1", "no operator `&&` for bool and int"),
        ("1 && true", "no operator `&&` for int and bool"),
        ("false || 'a'", "no operator `||` for bool and string"),
        ("1 ? 'a' : 'b'", "the condition of `? :` must be a bool, not int"),
        ("!1", "no operator `!` for int"),
        ("'abc'[1]", "strings cannot be indexed"),
        ("b'ab'[0]", "bytes values cannot be indexed"),
        ("'a' in 'abc'", "no operator `in` for string and string"),
        ("string([1, 2])", "cannot convert list to string"),
        ("string({'a': 1})", "cannot convert map to string"),
        ("'abc'.map(c, c)", "strings have no macro `map`"),
        ("[1, 2].reduce(a, b, 0, a + b)", "unknown function `reduce` (not CEL)"),
        ("[3, 1].min()", "unknown function `min` (not CEL)"),
        ("1 + 1.0", "no operator `+` for int and double"),
        ("{'a': 1} + {'b': 2}", "no operator `+` for map and map"),
        ("1.0 % 2.0", "no operator `%` for double and double"),
        ("-(1u)", "no operator `-` for uint"),
        ("[1] < [2]", "no operator `<` for list and list"),
        ("9223372036854775807 + 1", "`+` overflows the range of int"),
        ("1 / 0", "division by zero"),
        ("[1].filter(x, 1)", "the predicate of `filter` must give a bool, not int"),
        ("[1].all(x, 'yes')", "the predicate of `all` must give a bool, not string"),
        ("[1].exists(x, 1)", "the predicate of `exists` must give a bool, not int"),
        ("[1].exists_one(x, 1)", "the predicate of `exists_one` must give a bool, not int"),
        ("[0, 1].all(x, 1 / x > 0)", "division by zero"),
    ],
)
def test_what_the_cel_spec_refuses_is_refused_with_a_clear_message(expression, message):
    assert error_of(expression) == message


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("false && 1", False),  # the absorbing value wins over an error, both ways round
        ("1 && false", False),
        ("true || 'a'", True),
        ("event.data.missing == 1 || true", True),
        ("1 == 1.0", True),  # numbers compare by value across int, uint and double
        ("1u == 1", True),
        ("[1, 2] == [1.0, 2]", True),
        ("{'a': 1} == {'a': 1.0}", True),
        ("1 < 1.5", True),
        ("2u > 1", True),
        ("'a' == 1", False),  # different types are simply not equal
        ("null == 1", False),
        ("1 in [1.0, 2.0]", True),
        ("'a' in {'a': 1}", True),
        ("[1, 2, 3][2]", 3),
        ("-duration('90s')", -90.0),
        ("-(-5)", 5),
        ("[1, 2, 3][1u]", 2),
        ("-7 / 2", -3),  # integer division truncates toward zero
        ("-7 % 3", -1),
        ("b'a' + b'b'", "YWI="),  # bytes stay bytes (base64 in JSON), not "b'ab'"
        ("type('a' + 'b')", "string"),
        ("type([1] + [2])", "list"),
        ("1.0 / 0.0 > 1.0", True),  # Infinity is a double in CEL; only a result must be finite
        ("string(b'ok')", "ok"),
        ("{'a': 1}.exists(k, k == 'a')", True),
        ("[0, 1].exists(x, 1 / x > 0)", True),  # one true item outweighs another's error
        ("[1, 2].exists_one(x, x == 2)", True),
    ],
)
def test_what_the_cel_spec_defines_gives_the_specs_value(expression, value):
    result = evaluate(expression, CONTEXT)

    assert result == value and type(result) is type(value)


# --- messages read as a user would want ---------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("event.data.customer.name.__class__", "strings have no field `__class__`"),
        ("''.__class__", "strings have no field `__class__`"),
        ("event.data.lines.nope", "lists have no field `nope`"),
        ("event.data.note.x", "null values have no field `x`"),
        ("event.data.order.x", "ints have no field `x`"),
        ("event.data.nope", "no key `nope` in the map"),
        ("{'a': 1}['b']", "no such key in the map (a key of type string)"),
        ("1 + 'a'", "no operator `+` for int and string"),
        ("'ab' * 3", "no operator `*` for string and int"),
        ("size(1)", "no function `size` taking (int)"),
        ("'abc'.endsWith(1)", "no method `endsWith` on strings taking (int)"),
        ("'abc'.nope()", "unknown method `nope`"),
        ("nope(1)", "unknown function `nope`"),
        ("environ", "undeclared reference to `environ`"),
        ("int('x')", "cannot convert this string to int"),
        ("int(1e30)", "cannot convert this double to int"),
        ("uint(-1)", "cannot convert this int to uint"),
        ("timestamp('x')", "cannot convert this string to timestamp"),
        ("'x'.matches('[')", "invalid regular expression"),
        ("{[1]: 2}", "a map key must be a string, int, uint or bool"),
        ("{'a': 1, 'a': 2}", "a map literal repeats a key"),
        (
            "timestamp('2020-01-01T00:00:00Z').getHours('Nowhere/Zone')",
            "invalid argument for `getHours`",
        ),
        ("event{b: 1}", "invalid operation"),  # cel-python's own words would name a class
    ],
)
def test_an_error_says_what_went_wrong_in_cels_words(expression, message):
    assert error_of(expression) == message


PYTHONIC = re.compile(r"celpy|<class|Type\(|Token\(|Error\b|0x[0-9a-f]{6}|\bdict\b|\bNoneType\b")


@pytest.mark.parametrize("text", PYTHON_REACH, ids=lambda t: t[:50])
def test_no_error_message_shows_python(text):
    with pytest.raises(ExpressionError) as caught:
        render(text, CONTEXT)

    assert not PYTHONIC.search(caught.value.message), caught.value.message


# --- non-finite numbers -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expression",
    [
        "1.0 / 0.0",
        "-1.0 / 0.0",
        "double('nan')",
        "double('inf')",
        "[1.0, 1.0 / 0.0]",
        "{'ratio': {'deep': [double('-inf')]}}",
    ],
)
def test_a_result_holding_a_non_finite_number_is_refused(expression):
    assert "not a finite number" in error_of(expression)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("'a\\x00b'", "holds a NUL character"),
        ("['\\ud800']", "holds an unpaired surrogate"),
        ("{'k\\x00': 1}", "holds a NUL character"),
    ],
)
def test_a_result_holding_text_the_database_cannot_store_is_refused(expression, problem):
    assert problem in error_of(expression)


def test_text_the_database_cannot_store_is_fine_on_the_way_to_a_result():
    assert evaluate("size('a\\x00b') + size('\\ud800')", {}) == 4


def test_a_template_rendering_a_non_finite_number_into_text_is_refused_too():
    with pytest.raises(ExpressionError, match="not a finite number"):
        render("ratio: {{ 1.0 / 0.0 }}", CONTEXT)


# --- values CEL cannot hold -----------------------------------------------------------------------
def nested(depth: int):
    value: object = "bottom"
    for _ in range(depth):
        value = {"down": value}
    return value


POISON = {
    "event": {
        "type": "com.example.poison",
        "data": {
            "huge": 10**30,
            "tiny": -(10**30),
            "ratio": float("nan"),
            "deep": nested(MAX_DEPTH + 10),
            "fine": 7,
            "list": [1, 10**25],
        },
    }
}


def test_binding_data_cel_cannot_hold_never_raises():
    bound = bind(POISON)

    assert set(bound) == {"event"}


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("event.data.huge > 1", "event.data.huge: the integer is beyond the 64-bit range of CEL"),
        ("event.data.tiny", "event.data.tiny: the integer is beyond the 64-bit range of CEL"),
        ("event.data.list[1]", "event.data.list[1]: the integer is beyond the 64-bit range"),
        ("event.data.ratio", "event.data.ratio: the number is not finite"),
        ("event.data", "the integer is beyond the 64-bit range of CEL"),
    ],
)
def test_reading_a_value_cel_cannot_hold_fails_with_its_path(expression, message):
    assert message in error_of(expression, POISON)


def test_expressions_that_do_not_read_the_poison_are_unaffected():
    assert evaluate("event.type == 'com.example.poison'", POISON) is True
    assert evaluate("event.data.fine + 1", POISON) == 8
    assert evaluate("has(event.data.huge) && size(event.data.list) == 2", POISON) is True


def test_nesting_deeper_than_the_limit_fails_only_where_it_is_read():
    path = "event.data.deep" + ".down" * (MAX_DEPTH - 3)
    assert evaluate(f"has({path}.down) && type({path}) == map", POISON) is True
    assert f"nested deeper than {MAX_DEPTH} levels" in error_of(path + ".down.down.down", POISON)
    assert f"nested deeper than {MAX_DEPTH} levels" in error_of("event.data.deep", POISON)


def test_results_are_plain_finite_json():
    for expression in ("event.data.fine", "[event.data.fine, 1.5, 'x', null, true]"):
        result = evaluate(expression, POISON)
        assert plain_json(result)
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in [result])


# --- refused when the workflow is stored ------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("[1, 2].reduce(a, b, 0, a + b)", "unknown function `reduce` (not CEL)"),
        ("[3, 1].min()", "unknown function `min` (not CEL)"),
        ("event.data.order >", "syntax error at column 18, near `ata.order >`"),
        ("event.data.total > 1 &&\n  event.data.x ==", "syntax error at line 2, column 16"),
        ("'a' + \x00", "syntax error at column 7"),
    ],
)
def test_a_check_says_what_is_wrong_and_where(expression, message):
    with pytest.raises(ExpressionError) as caught:
        check(expression)

    assert caught.value.message.startswith(message)
    assert caught.value.message.isprintable()


@pytest.mark.parametrize(
    "expression",
    [
        "[0][int(secrets.pin)]",
        "[0][int(secrets.pin) + 1]",
        "{'a': 1}[secrets.pin + 'x']",
        "int(secrets.pin) * 9223372036854775807",
        "secrets.pin.nope",
        "timestamp(secrets.pin + 'x')",
        "[secrets.pin][1]",
    ],
)
def test_no_message_shows_a_value_computed_from_a_secret(expression):
    pin = "736251"
    context = {"secrets": {"pin": pin}}
    with pytest.raises(ExpressionError) as caught:
        evaluate(expression, context)

    message = caught.value.message
    for shown in (pin, str(int(pin) + 1), pin + "x", pin[:4]):
        assert shown not in message, message


# --- the steps that evaluate expressions say what they got in JSON's words --------------------
@pytest.mark.parametrize(
    ("kind", "config", "said"),
    [
        ("condition", {"expression": "'yes'"}, "got a string"),
        ("filter", {"expression": "{'a': 1}"}, "got a map"),
        ("for_each", {"items": "{'a': 1}", "do": {"kind": "log"}}, "got a map"),
        ("for_each", {"items": "null", "do": {"kind": "log"}}, "got null"),
    ],
)
def test_a_step_given_the_wrong_kind_of_value_names_its_kind_not_a_python_repr(kind, config, said):
    from workflows.steps import registry
    from workflows.steps.base import StepContext, StepError

    ctx = StepContext(run_id=1, step_id="s", attempt=1, idempotency_key="k", event={}, steps={})
    with pytest.raises(StepError) as caught:
        registry.get(kind).execute(config, ctx)

    assert said in str(caught.value)
    assert not PYTHONIC.search(str(caught.value)) and "'yes'" not in str(caught.value)
