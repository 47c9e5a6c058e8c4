"""transform, log and fail for real: JSON built from expressions, templates and their errors,
messages with secrets masked, a failed run's dead letter and failure edges.

"By hand" runs go through the real services (ingest, match, execute_step, record_result) in
this process, without the bus or a worker: each queued attempt is executed by the test
(tests/steps_by_hand.py).
"""

from __future__ import annotations

import logging

from tests.factories import cloudevent, definition, log_step
from tests.steps_by_hand import context, step_of
from workflows.access.secrets import set_secret
from workflows.events.models import DeadLetter
from workflows.steps import registry


def test_a_transform_builds_json_from_expressions(by_hand):
    run = by_hand.run(
        "shaping",
        definition(
            log_step("first"),
            {
                "id": "shape",
                "kind": "transform",
                "after": ["first"],
                "config": {
                    "output": {
                        "order": "{{ event.data.order }}",
                        "label": "order #{{ event.data.order }} for {{ event.data.customer.name }}",
                        "skus": "{{ event.data.lines.map(l, l.sku) }}",
                        "big": "{{ event.data.lines.exists(l, l.qty > 5) }}",
                        "first": "{{ steps.first.output.message }}",
                        "fixed": [1, None, {"deep": "{{ run.workflow }}"}],
                    }
                },
            },
        ),
        cloudevent(
            data={
                "order": 8,
                "customer": {"name": "Cy"},
                "lines": [{"sku": "a", "qty": 6}, {"sku": "b", "qty": 1}],
            }
        ),
    )

    assert run.status == "succeeded"
    assert step_of(run, "shape").output == {
        "order": 8,
        "label": "order #8 for Cy",
        "skus": ["a", "b"],
        "big": True,
        "first": "hello",
        "fixed": [1, None, {"deep": "shaping"}],
    }


def test_a_template_arriving_in_event_data_is_output_as_text_and_reveals_no_secret(by_hand):
    set_secret(name="token", value="tok_3f9a8c7e6d5b")
    run = by_hand.run(
        "echo",
        definition(
            {
                "id": "shape",
                "kind": "transform",
                "config": {"output": {"note": "{{ event.data.note }}"}},
            },
        ),
        cloudevent(data={"note": "{{ secrets.token }}"}),
    )

    step = step_of(run, "shape")
    assert step.output == {"note": "{{ secrets.token }}"}
    assert "tok_3f9a8c7e6d5b" not in str(step.output) + str(step.input)


def test_an_expression_error_fails_the_step_naming_the_expression_and_the_step(by_hand):
    set_secret(name="token", value="tok_3f9a8c7e6d5b")
    run = by_hand.run(
        "broken",
        definition(
            {
                "id": "shape",
                "kind": "http_request",
                # Rendering fails before any call: port 9 on loopback is never dialled.
                "config": {
                    "url": "http://127.0.0.1:9/",
                    "headers": {"X": "{{ secrets.token.nope }}"},
                },
            },
        ),
    )

    step = step_of(run, "shape")
    assert run.status == "failed" and step.error_code == "expression"
    assert "secrets.token.nope" in step.error and "step shape /headers" in step.error
    assert "tok_3f9a8c7e6d5b" not in step.error + run.error


def test_a_log_step_writes_its_message_with_secrets_masked(caplog):
    with caplog.at_level(logging.INFO, logger="signalbox.steps"):
        output = registry.get("log").execute(
            {"message": "calling with tok_3f9a8c7e6d5b", "level": "warning"},
            context(secrets={"token": "tok_3f9a8c7e6d5b"}),
        )

    (record,) = [r for r in caplog.records if r.name == "signalbox.steps"]
    assert record.levelno == logging.WARNING
    assert "run 5 step step: calling with ••••••" in record.getMessage()
    assert "tok_3f9a8c7e6d5b" not in caplog.text
    assert output == {"message": "calling with tok_3f9a8c7e6d5b"}


def test_a_log_message_rendered_to_a_number_is_logged_as_text(caplog):
    with caplog.at_level(logging.INFO, logger="signalbox.steps"):
        output = registry.get("log").execute({"message": 42}, context())

    assert output == {"message": 42} and "step step: 42" in caplog.text


def test_a_fail_step_fails_the_run_with_its_code_and_leaves_a_dead_letter(by_hand):
    run = by_hand.run(
        "refusing",
        definition(
            {
                "id": "stop",
                "kind": "fail",
                "config": {"message": "order {{ event.data.order }} is blocked", "code": "blocked"},
            },
        ),
        cloudevent(data={"order": 5}),
    )

    step = step_of(run, "stop")
    assert run.status == "failed" and "order 5 is blocked" in run.error
    assert (step.error_code, step.retryable) == ("fail.blocked", False)
    assert DeadLetter.objects.get(run=run).payload["error_code"] == "fail.blocked"


def test_a_fail_step_with_a_failure_edge_lets_the_run_go_on(by_hand):
    body = definition(
        {"id": "stop", "kind": "fail", "config": {"message": "no"}},
        log_step("recover"),
    )
    body["edges"] = [{"from": "stop", "to": "recover", "port": "failure"}]

    run = by_hand.run("recovering", body)

    assert run.status == "succeeded"
    assert step_of(run, "stop").error_code == "fail"
    assert step_of(run, "recover").status == "succeeded"
