"""emit_event: the emitted event keeps the conversation and starts the workflows listening, a
retry after a lost worker publishes no second event, a schema breach fails without retrying.

"By hand" runs go through the real services (ingest, match, execute_step, record_result) in
this process, without the bus or a worker: each queued attempt is executed by the test
(tests/steps_by_hand.py).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.factories import cloudevent, definition, log_step
from tests.steps_by_hand import context, step_of
from tests.waiting import wait_until
from workflows.authoring.definitions import definition_for
from workflows.core.expressions import render_value
from workflows.events.models import Event
from workflows.runs.execution import build_context, claim
from workflows.runs.models import Run, StepRun
from workflows.runs.sweeps import expire_leases
from workflows.steps import registry
from workflows.steps.base import StepError

CE_JSON = {"Content-Type": "application/cloudevents+json"}


def emitter_body(**extra) -> dict:
    return definition(
        {
            "id": "announce",
            "kind": "emit_event",
            **extra,
            "config": {
                "type": "com.example.order.checked",
                "subject": "order-{{ event.data.order }}",
                "data": {"order": "{{ event.data.order }}", "ok": True},
            },
        }
    )


@pytest.mark.django_db(transaction=True)
def test_an_emitted_event_keeps_the_conversation_and_starts_the_workflows_listening(api):
    for slug, body in (
        ("checker", emitter_body()),
        ("listener", definition(log_step("heard"), event="com.example.order.checked")),
    ):
        assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
        assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201
    origin = f"origin-{uuid.uuid4().hex[:8]}"
    sent = api.post(
        "/api/v1/events",
        json=cloudevent(id=origin, correlationid="conv-9", data={"order": 9}),
        headers=CE_JSON,
    )
    assert sent.status_code == 202

    heard = wait_until(
        lambda: Run.objects.filter(workflow__slug="listener", status="succeeded").first(),
        timeout=60,
        message="the listener's run",
    )
    # The emitted event is on the bus before the emitting step's result is recorded: the
    # listener's run can finish first.
    checker = wait_until(
        lambda: Run.objects.filter(workflow__slug="checker", status="succeeded").first(),
        timeout=60,
        message="the checker's run",
    )
    emitted = heard.event
    step = step_of(checker, "announce")
    assert emitted.type == "com.example.order.checked" and emitted.subject == "order-9"
    assert emitted.data == {"order": 9, "ok": True}
    assert emitted.correlation_id == "conv-9" == heard.correlation_id == checker.correlation_id
    assert emitted.causation_id == origin
    assert emitted.ce_id == step.idempotency_key
    assert emitted.source == f"/signalbox/runs/{checker.pk}"
    assert step.output == {
        "id": emitted.pk,
        "ce_id": emitted.ce_id,
        "type": "com.example.order.checked",
        "duplicate": False,
    }


def test_a_retried_emit_after_a_lost_worker_publishes_no_second_event(by_hand):
    run = by_hand.start(
        "checker",
        emitter_body(retry={"max_attempts": 2, "delay_seconds": 0}),
        cloudevent(data={"order": 3}),
    )
    # Attempt 1: a worker claims it and emits, then dies before recording the result.
    first = StepRun.objects.get(pk=by_hand.queued.pop(0))
    assert claim(first.pk, "doomed-worker")
    step = definition_for(run.version).steps["announce"]
    ctx = build_context(run, step, first, {})
    emitted = registry.get("emit_event").execute(
        render_value(dict(step.config), ctx.expression_context()), ctx
    )
    # The lease runs out: attempt 1 fails as lost, attempt 2 is scheduled and runs.
    assert expire_leases(now=timezone.now() + timedelta(hours=1)) == 1
    by_hand.drain()

    run.refresh_from_db()
    second = step_of(run, "announce", attempt=2)
    assert run.status == "succeeded"
    assert step_of(run, "announce", attempt=1).error_code == "timeout.heartbeat"  # no heartbeat
    assert Event.objects.filter(type="com.example.order.checked").count() == 1
    assert second.output == {**emitted, "duplicate": True}


def test_an_emitted_event_that_breaks_its_schema_fails_the_step_without_retrying():
    from workflows.events.schemas import SchemaViolation

    def emit(config):
        raise SchemaViolation(
            "com.example.order.checked", 2, [{"path": "/order", "message": "not a string"}]
        )

    with pytest.raises(StepError) as caught:
        registry.get("emit_event").execute(
            {"type": "com.example.order.checked"}, context(emit=emit)
        )

    assert caught.value.code == "schema" and caught.value.retryable is False
    assert "/order: not a string" in str(caught.value)
