"""The python step: registered functions run with their input and context, their errors and
retries, and code that cannot come from a workflow definition.

"By hand" runs go through the real services (ingest, match, execute_step, record_result) in
this process, without the bus or a worker: each queued attempt is executed by the test
(tests/steps_by_hand.py).
"""

from __future__ import annotations

import pytest

from tests.factories import cloudevent, definition
from tests.steps_by_hand import context, step_of
from workflows.authoring.definitions import parse_definition
from workflows.core.definition import InvalidDefinition
from workflows.steps import registry
from workflows.steps.base import StepError
from workflows.steps.python import registered_functions, step_function


def run_python(config: dict, monkeypatch, modules: str = "tests.python_steps", **ctx):
    monkeypatch.setenv("SIGNALBOX_PYTHON_MODULES", modules)
    return registry.get("python").execute(config, context(**ctx))


def test_a_registered_function_runs_with_its_input_and_the_context(monkeypatch):
    output = run_python(
        {
            "function": "tests.total",
            "input": {"lines": [{"price": 3, "qty": 2}, {"price": 4, "qty": 1}]},
        },
        monkeypatch,
        run_id=77,
    )

    assert output == {"total": 10, "lines": 2, "run": 77, "key": "sb-kinds-0001"}


def test_an_unknown_function_is_an_error_listing_the_registered_ones(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python({"function": "tests.nope"}, monkeypatch)

    message = str(caught.value)
    assert "'tests.nope'" in message
    assert "tests.total" in message and "tests.broken" in message
    assert caught.value.code == "python.unknown" and caught.value.retryable is False


def test_a_function_decides_retries_by_raising_a_step_error(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python({"function": "tests.unavailable"}, monkeypatch)

    assert (caught.value.retryable, caught.value.retry_after, caught.value.code) == (
        True,
        5,
        "warehouse",
    )


def test_a_function_that_crashes_fails_the_attempt_naming_the_function(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python({"function": "tests.broken", "input": {"zero": 0}}, monkeypatch)

    assert "tests.broken" in str(caught.value) and "ZeroDivisionError" in str(caught.value)
    assert caught.value.code == "python.error"


def test_a_function_returning_something_that_is_not_json_fails_the_attempt(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python({"function": "tests.not_json"}, monkeypatch)

    assert caught.value.code == "python.output" and "tests.not_json" in str(caught.value)


def test_a_module_that_cannot_be_imported_is_a_clear_error(monkeypatch):
    with pytest.raises(StepError) as caught:
        run_python(
            {"function": "tests.total"},
            monkeypatch,
            modules="tests.python_steps, tests.no_such_module",
        )

    assert "tests.no_such_module" in str(caught.value)
    assert "SIGNALBOX_PYTHON_MODULES" in str(caught.value)
    assert caught.value.code == "python.import"


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"function": "tests.total", "code": "import os; os.system('id')"}, "/steps/0/config"),
        ({"function": "__import__('os').system('id')"}, "/steps/0/config/function"),
        ({"function": "{{ event.data.function }}"}, "/steps/0/config/function"),
        ({"function": "lambda: 1"}, "/steps/0/config/function"),
        ({"source": "def f(x, ctx): return 1"}, "/steps/0/config"),
    ],
)
def test_code_cannot_come_from_a_workflow_definition(config, path):
    with pytest.raises(InvalidDefinition) as caught:
        parse_definition(definition({"id": "py", "kind": "python", "config": config}))

    assert path in [p.path for p in caught.value.problems]


def test_a_name_cannot_be_registered_for_two_functions():
    with pytest.raises(ValueError, match="registered twice"):
        step_function("tests.total")(lambda input, ctx: None)

    assert "tests.total" in registered_functions()


def test_a_python_step_in_a_run_gets_its_rendered_input(by_hand):
    run = by_hand.run(
        "pricing",
        definition(
            {
                "id": "price",
                "kind": "python",
                "config": {
                    "function": "tests.total",
                    "input": {"lines": "{{ event.data.lines }}"},
                },
            }
        ),
        cloudevent(data={"lines": [{"price": 5, "qty": 3}]}),
    )

    assert run.status == "succeeded"
    assert step_of(run, "price").output["total"] == 15
