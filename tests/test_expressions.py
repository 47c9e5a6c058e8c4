"""The expression language: CEL over plain JSON with `{{ … }}` interpolation.

What it computes, how it reports errors, its limits, and a suite of template-injection
payloads from other template languages that must be refused or stay inert text: no escape to
Python, no Python object reachable, no crash other than ExpressionError.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import pytest

from workflows.core import cel_runtime, expressions
from workflows.core.expressions import (
    MAX_EXPRESSION_CHARS,
    MAX_OUTPUT_BYTES,
    TIME_LIMIT_SECONDS,
    ExpressionError,
    check,
    check_templates,
    evaluate,
    render,
    render_value,
)
from workflows.steps.base import StepContext
from workflows.steps.transform import Transform

SECRET = "sk_live_51HqLyjWDarjtT1zdp7dc"
CONTEXT = {
    "event": {
        "id": "e-1",
        "type": "com.example.order.placed",
        "time": "2026-01-02T03:04:05Z",
        "data": {
            "order": 42,
            "total": 19.5,
            "customer": {"name": "Ann", "vip": True},
            "lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
            "note": None,
        },
    },
    "steps": {"lookup": {"output": {"status": 200, "body": {"stock": 7}}, "port": "success"}},
    "run": {"id": 9, "workflow": "orders", "version": 3},
    "vars": {"threshold": 40, "greeting": "Hello"},
    "secrets": {"stripe": SECRET},
}


def plain_json(value) -> bool:
    """Only JSON's own types, all the way down: no Python object came back."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) is list:
        return all(plain_json(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and plain_json(v) for k, v in value.items())
    return False


# --- values ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("event.data.order", 42),
        ("event.data.order * 2 + 1", 85),
        ("event.data.total", 19.5),
        ("event.data.customer.name", "Ann"),
        ("event.data['customer']['vip']", True),
        ("event.data.note", None),
        ("event.data.lines.map(l, l.sku)", ["a", "b"]),
        ("event.data.lines.filter(l, l.qty > 1).size()", 1),
        ("event.data.lines.exists(l, l.sku == 'b')", True),
        ("has(event.data.coupon)", False),
        ("event.data.order > vars.threshold ? 'big' : 'small'", "big"),
        ("steps.lookup.output.body.stock", 7),
        ("run.workflow + '#' + string(run.id)", "orders#9"),
        ("vars.greeting + ', ' + event.data.customer.name", "Hello, Ann"),
        (
            "{'id': event.data.order, 'skus': event.data.lines.map(l, l.sku)}",
            {"id": 42, "skus": ["a", "b"]},
        ),
        ("'Ann'.startsWith('A') && 'order-42'.matches('^order-[0-9]+$')", True),
        ("timestamp(event.time) + duration('1h')", "2026-01-02T04:04:05Z"),
        ("duration('90s')", 90.0),
        ("size(secrets.stripe) > 10", True),
        ("type(event.data) == map", True),
    ],
)
def test_an_expression_reads_the_runs_json_and_gives_json_back(expression, value):
    result = evaluate(expression, CONTEXT)

    assert result == value and type(result) is type(value)
    assert plain_json(result)


def test_names_outside_the_documented_roots_do_not_exist():
    with pytest.raises(ExpressionError, match="undeclared reference"):
        evaluate("environ", {**CONTEXT, "environ": {"HOME": "/root"}})


# --- interpolation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("{{ event.data.order }}", 42),
        ("  {{ event.data.total }}  ", 19.5),
        ("{{ event.data.customer.vip }}", True),
        ("{{ event.data.note }}", None),
        ("{{ event.data.lines.map(l, l.qty) }}", [2, 1]),
        ("{{ event.data.customer }}", {"name": "Ann", "vip": True}),
    ],
)
def test_a_whole_string_template_keeps_the_type_of_its_value(template, value):
    result = render(template, CONTEXT)

    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("order #{{ event.data.order }}", "order #42"),
        ("{{ vars.greeting }}, {{ event.data.customer.name }}!", "Hello, Ann!"),
        ("skus: {{ event.data.lines.map(l, l.sku) }}", 'skus: ["a","b"]'),
        ("who: {{ event.data.customer }}", 'who: {"name":"Ann","vip":true}'),
        ("{{ 1 }}{{ 2 }}", "12"),
        ("no templates here", "no templates here"),
        ("braces { alone } and }} stay", "braces { alone } and }} stay"),
    ],
)
def test_templates_inside_text_are_replaced_by_their_values_as_text(template, text):
    assert render(template, CONTEXT) == text


def test_render_value_renders_every_string_of_a_config_and_leaves_the_rest():
    config = {
        "url": "https://api.example.com/orders/{{ event.data.order }}",
        "json": {"qty": "{{ event.data.lines[0].qty }}", "flags": [True, 3, "{{ run.id }}"]},
        "timeout_seconds": 5,
    }

    assert render_value(config, CONTEXT) == {
        "url": "https://api.example.com/orders/42",
        "json": {"qty": 2, "flags": [True, 3, 9]},
        "timeout_seconds": 5,
    }


def test_data_that_looks_like_a_template_is_not_evaluated_again():
    context = {**CONTEXT, "event": {"data": {"note": "{{ secrets.stripe }}"}}}

    assert render("{{ event.data.note }}", context) == "{{ secrets.stripe }}"
    assert render("note: {{ event.data.note }}", context) == "note: {{ secrets.stripe }}"


def test_a_transform_outputs_rendered_data_as_it_is_without_a_second_evaluation():
    # The services render a step's config once, then run the kind on it.
    ctx = StepContext(
        run_id=1,
        step_id="shape",
        attempt=1,
        idempotency_key="k",
        event={"data": {"note": "{{ secrets.stripe }}"}},
        steps={},
        secrets={"stripe": SECRET},
    )
    config = render_value({"output": {"note": "{{ event.data.note }}"}}, ctx.expression_context())

    output = Transform().execute(config, ctx)

    assert output == {"note": "{{ secrets.stripe }}"}
    assert SECRET not in json.dumps(output)


# --- errors ------------------------------------------------------------------------------------
def test_an_evaluation_error_names_the_expression_and_the_step():
    with pytest.raises(ExpressionError) as caught:
        render("total: {{ event.data.missing + 1 }}", CONTEXT, where="step shape /output")

    message = str(caught.value)
    assert "event.data.missing + 1" in message
    assert "step shape /output" in message
    assert caught.value.where == "step shape /output"


def test_a_syntax_error_names_the_expression_and_where_it_is():
    with pytest.raises(ExpressionError) as caught:
        check("event.data.order >", where="step route /expression")

    assert "event.data.order >" in str(caught.value)
    assert "step route /expression" in str(caught.value)
    assert "syntax error" in caught.value.message


def test_check_templates_lists_every_invalid_template_with_its_path():
    problems = check_templates(
        {
            "ok": "{{ event.data.order }}",
            "headers": {"X-A": "{{ event.data. }}"},
            "lines": ["fine", "{{ ) }}"],
        }
    )

    assert [path for path, _message in problems] == ["/headers/X-A", "/lines/1"]
    assert all("syntax error" in message for _path, message in problems)


@pytest.mark.parametrize(
    "expression",
    [
        "secrets.stripe.nope",
        "secrets.stripe.x.y",
        "int(secrets.stripe)",
        "double(secrets.stripe)",
        "timestamp(secrets.stripe)",
        "duration(secrets.stripe)",
        "bool(secrets.stripe)",
        "secrets.stripe + 1",
        "secrets.stripe / 2",
        "-secrets.stripe",
        "!secrets.stripe",
        "secrets.stripe ? 1 : 2",
        "secrets.stripe < 1",
        "secrets.stripe in 5",
        "event.data[secrets.stripe]",
        "{'a': 1}[secrets.stripe]",
        "[1][secrets.stripe]",
        "event.data.order.matches(secrets.stripe + '(')",
        "'x'.matches(secrets.stripe + '[')",
        "[secrets.stripe].map(s, s.nope)",
        "{secrets.stripe: 1}.nope",
        "secrets.stripe.size(1)",
    ],
)
def test_an_error_message_never_contains_a_secret(expression):
    with pytest.raises(ExpressionError) as caught:
        evaluate(expression, CONTEXT, where="step charge")

    message = str(caught.value).replace(expression, "")
    assert SECRET not in message
    assert SECRET[:12] not in message


# --- limits ------------------------------------------------------------------------------------
def test_an_expression_longer_than_the_limit_is_refused_at_validation_and_at_run_time():
    long = " + ".join(["1"] * (MAX_EXPRESSION_CHARS // 4 + 1))
    assert len(long) > MAX_EXPRESSION_CHARS

    with pytest.raises(ExpressionError, match=f"longer than {MAX_EXPRESSION_CHARS}"):
        check(long)
    with pytest.raises(ExpressionError, match=f"longer than {MAX_EXPRESSION_CHARS}"):
        evaluate(long, CONTEXT)
    assert check_templates({"text": "{{ " + long + " }}"})[0][0] == "/text"


def test_a_result_bigger_than_the_output_limit_is_refused():
    context = {"event": {"data": {"chunk": "x" * 1024, "items": list(range(400))}}}

    with pytest.raises(ExpressionError, match=f"over {MAX_OUTPUT_BYTES}"):
        evaluate("event.data.items.map(i, event.data.chunk)", context)


def test_rendered_text_bigger_than_the_output_limit_is_refused():
    half = "y" * (MAX_OUTPUT_BYTES // 2 + 10)
    context = {"event": {"data": {"half": half}}}

    assert render("{{ event.data.half }}", context) == half
    with pytest.raises(ExpressionError, match="over"):
        render("{{ event.data.half }}{{ event.data.half }}", context)


def test_a_slow_expression_is_stopped_at_the_time_limit():
    # Nested comprehensions are quadratic; over 200 items cel-python needs ~30 s for this.
    context = {"event": {"data": {"items": list(range(200))}}}
    slow = "event.data.items.map(a, event.data.items.map(b, a * b)).size()"
    started = time.process_time()

    with pytest.raises(ExpressionError) as caught:
        evaluate(slow, context, where="step crunch")

    # The limit is on CPU time (a busy machine must not fail cheap expressions).
    spent = time.process_time() - started
    assert f"took longer than {TIME_LIMIT_SECONDS}s" in str(caught.value)
    assert "step crunch" in str(caught.value)
    assert spent < TIME_LIMIT_SECONDS + 1.5


def burn(cpu_seconds: float) -> None:
    started = time.process_time()
    while time.process_time() - started < cpu_seconds:
        pass


def test_a_spent_budget_raised_once_and_swallowed_is_raised_again():
    # Python swallows an exception raised while it runs a __del__ (or a ResourceWarning of a
    # collected socket); the limit must not be lost with it.
    budget = cel_runtime.Budget(0.05)
    burn(0.1)
    with contextlib.suppress(cel_runtime.LimitExceeded):  # swallowed, as in a finalizer
        for _ in range(1000):
            budget.tick()
    with pytest.raises(cel_runtime.LimitExceeded):
        for _ in range(100):
            budget.tick()


def test_the_time_limit_leaves_the_next_expression_unaffected():
    with pytest.raises(ExpressionError):
        evaluate(
            "event.data.items.map(a, event.data.items.map(b, a * b))",
            {"event": {"data": {"items": list(range(200))}}},
        )

    assert evaluate("1 + 1", {}) == 2


# --- template injection --------------------------------------------------------------------------
CANARY = "CANARY_PATH"

# Reaching for Python (attributes, dunders, builtins, modules): must be an ExpressionError.
PYTHON_REACH = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__[2].__subclasses__()[40]('/etc/passwd').read() }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ {}.__class__.__bases__[0] }}",
    "{{ event.__class__ }}",
    "{{ event['__class__'] }}",
    "{{ event.data.__dict__ }}",
    "{{ event.data.customer.name.__len__() }}",
    "{{ dyn(event).__class__.__init__.__globals__ }}",
    "{{ getattr(event, '__class__') }}",
    "{{ __import__('os').system('touch CANARY_PATH') }}",
    "{{ os.system('touch CANARY_PATH') }}",
    "{{ os.popen('id').read() }}",
    "{{ subprocess.run(['touch', 'CANARY_PATH']) }}",
    "{{ eval('1+1') }}",
    "{{ exec('import os') }}",
    "{{ compile('1', 'x', 'eval') }}",
    "{{ open('/etc/passwd').read() }}",
    "{{ globals() }}",
    "{{ locals() }}",
    "{{ __builtins__ }}",
    "{{ builtins.open }}",
    "{{ sys.modules }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ self }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('id').read() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__.os.system('touch CANARY_PATH') }}",
    "{{ namespace.__init__.__globals__.os.system('touch CANARY_PATH') }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ url_for.__globals__['current_app'].config }}",
    "{{ get_flashed_messages.__globals__ }}",
    "{{ settings.SECRET_KEY }}",
    "{{ request.META }}",
    "{{ messages.storages.0.signer.key }}",
    "{{ 7*'7' }}",
    "{{ _self.env.registerUndefinedFilterCallback('exec') }}",
    "{{ ['id']|filter('system') }}",
    "{{ lambda: 1 }}",
    "{{ [x for x in ()] }}",
    "{{ (1).__class__ }}",
    "{{ secrets.stripe.__class__ }}",
    "{{ '{{' + 'secrets.stripe' + '}}' }}",
    "{{ '{{ secrets.stripe }}' }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{% import os %}{{ os.system('touch CANARY_PATH') }}",
    '{{#with "s" as |string|}}{{/with}}',
    "{{=7*7}}",
    "{{ \uff45vent.data }}",  # a fullwidth e
    "{{ event.data\u202e }}",
    "{{ " + "(" * 900 + "1" + ")" * 900 + " }}",
    "{{ " + "[" * 900 + "]" * 900 + " }}",
    "{{ " + "-" * 1500 + "1 }}",
    "{{ " + "!" * 1500 + "true }}",
    "{{ " + "a." * 900 + "b }}",
    "{{ " + "f(" * 600 + ")" * 600 + " }}",
    "{{ " + "1 + " * 490 + "1 }}",
    "{{ " + "x" * 5000 + " }}",
    "{{ " + "{" * 600 + "}" * 600 + " }}",
]

# Other template languages' syntax, without `{{`: text, returned as it was.
FOREIGN_SYNTAX = [
    "${7*7}",
    "#{7*7}",
    "<%= 7*7 %>",
    "<%= system('touch CANARY_PATH') %>",
    "<%= `id` %>",
    "${self.module.cache.util.os.system('touch CANARY_PATH')}",
    "<% import os; os.system('touch CANARY_PATH') %>",
    '<#assign ex="freemarker.template.utility.Execute"?new()>${ ex("touch CANARY_PATH") }',
    "#set($x = 7*7)$x",
    "#set($e=\"e\")$e.getClass().forName('java.lang.Runtime')",
    "{0.__class__}",
    "{event.__class__.__init__.__globals__}",
    "{.__class__.__mro__}",
    "%(secret)s %s %x",
    "*{7*7}",
    "@(7*7)",
    "[[${7*7}]]",
    "{php}echo 7*7;{/php}",
    "{system('touch CANARY_PATH')}",
    "{% debug %}",
    "{% load module %}",
    "{ {secrets.stripe} }",
    "{\n{ secrets.stripe }\n}",
    "A" * 100_000,
    "(" * 5000 + ")" * 5000,
    "\x00\x01 {} \ufeff",
]


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "pwned"
    yield str(path)
    assert not path.exists(), "a payload ran a command"


def payload(text: str, canary: str) -> str:
    return text.replace(CANARY, canary)


@pytest.mark.parametrize("text", PYTHON_REACH, ids=lambda t: t[:50])
def test_a_payload_reaching_for_python_is_refused_with_an_expression_error(text, canary):
    text = payload(text, canary)

    with pytest.raises(ExpressionError):
        render(text, CONTEXT, where="step inject")
    check_templates({"field": text})  # validation may flag it, and never crashes


@pytest.mark.parametrize("text", FOREIGN_SYNTAX, ids=lambda t: t[:50])
def test_another_template_languages_syntax_stays_inert_text(text, canary):
    text = payload(text, canary)

    assert render(text, CONTEXT, where="step inject") == text
    assert check_templates({"field": text}) == []
    assert render_value({"a": [text]}, CONTEXT) == {"a": [text]}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{{ 7*7 }}", 49),  # our own syntax: CEL arithmetic, nothing more
        ("{{ type(event) }}", "map"),  # a type is its CEL name, not a Python class
        ("{{ [type(1), type('a'), type([]), type(type(1))] }}", ["int", "string", "list", "type"]),
        ("{{ vars }}", {"threshold": 40, "greeting": "Hello"}),  # the root, not Python's vars()
        ("{{ '__class__' }}", "__class__"),
        ("{{ b'\\xff\\x00' }}", "/wA="),
    ],
)
def test_a_template_in_our_own_syntax_gives_only_json_values(text, value):
    result = render(text, CONTEXT)

    assert result == value
    assert plain_json(result)


def test_no_payload_changed_the_process(canary):
    environ_before, cwd_before = dict(os.environ), os.getcwd()

    for text in PYTHON_REACH + FOREIGN_SYNTAX:
        try:
            result = render(payload(text, canary), CONTEXT)
        except ExpressionError:
            continue
        assert plain_json(result)

    assert dict(os.environ) == environ_before and os.getcwd() == cwd_before
    assert expressions.evaluate("1 + 1", {}) == 2
