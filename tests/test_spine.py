"""End to end through every real process: HTTP ingest -> bus -> run -> Celery steps."""

from __future__ import annotations

import pytest

from tests.factories import cloudevent, definition, http_step, log_step
from tests.http_recorder import Reply
from tests.waiting import wait_until

CE_JSON = {"Content-Type": "application/cloudevents+json"}


def publish(api, slug: str, body: dict) -> None:
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


def send(api, event: dict) -> int:
    response = api.post("/api/v1/events", json=event, headers=CE_JSON)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def finished_run(api, slug: str, event_id: int, timeout: float = 30) -> dict:
    def done():
        runs = api.get("/api/v1/runs", params={"workflow": slug}).json()["runs"]
        mine = [r for r in runs if r["event"] == event_id]
        return mine[0] if mine and mine[0]["status"] in ("succeeded", "failed") else None

    return wait_until(done, timeout=timeout, message=f"a finished run of {slug}")


@pytest.mark.django_db(transaction=True)
def test_an_event_runs_the_published_workflow_steps_in_dependency_order(api, recorder):
    publish(
        api,
        "orders",
        definition(
            log_step("first"),
            http_step(
                "call", f"{recorder.url}/hook", after=("first",), config={"send_event": True}
            ),
            log_step("last", after=("call",)),
        ),
    )
    event_id = send(api, cloudevent(data={"order": 7}))

    run = finished_run(api, "orders", event_id)

    assert run["status"] == "succeeded", run
    assert [s["id"] for s in run["steps"]] == ["first", "call", "last"]
    assert all(s["status"] == "succeeded" for s in run["steps"])
    first, call, last = run["steps"]
    assert first["finished_at"] <= call["started_at"] and call["finished_at"] <= last["started_at"]
    assert len(recorder.requests) == 1
    assert recorder.requests[0].json() == {"order": 7}
    assert recorder.requests[0].headers["Idempotency-Key"] == call["idempotency_key"]
    assert call["output"]["status"] == 200


@pytest.mark.django_db(transaction=True)
def test_a_retryable_failure_is_retried_with_the_same_idempotency_key(api, recorder):
    recorder.answer(Reply(status=503, body={"down": True}))
    publish(
        api,
        "retrying",
        definition(
            http_step("call", recorder.url, retry={"max_attempts": 3, "delay_seconds": 0.1}),
        ),
    )
    event_id = send(api, cloudevent())

    run = finished_run(api, "retrying", event_id)

    assert run["status"] == "succeeded", run
    assert run["steps"][0]["attempt"] == 2
    keys = {r.headers["Idempotency-Key"] for r in recorder.requests}
    assert len(recorder.requests) == 2 and len(keys) == 1


@pytest.mark.django_db(transaction=True)
def test_a_step_that_keeps_failing_fails_the_run_and_leaves_a_dead_letter(api, recorder):
    from workflows.events.models import DeadLetter

    recorder.default = Reply(status=400, body={"error": "bad"})
    publish(
        api,
        "failing",
        definition(http_step("call", recorder.url), log_step("never", after=("call",))),
    )
    event_id = send(api, cloudevent())

    run = finished_run(api, "failing", event_id)

    assert run["status"] == "failed"
    assert "answered 400" in run["error"]
    assert [s["id"] for s in run["steps"]] == ["call"]
    letter = DeadLetter.objects.get(run_id=run["id"])
    assert letter.kind == "step" and letter.step_id == "call"


@pytest.mark.django_db(transaction=True)
def test_an_event_sent_twice_starts_one_run(api):
    publish(api, "once", definition(log_step("only")))
    event = cloudevent()
    first = api.post("/api/v1/events", json=event, headers=CE_JSON)
    second = api.post("/api/v1/events", json=event, headers=CE_JSON)

    assert first.status_code == 202 and second.status_code == 200
    assert second.json() == {**first.json(), "duplicate": True}
    finished_run(api, "once", first.json()["id"])
    runs = api.get("/api/v1/runs", params={"workflow": "once"}).json()["runs"]
    assert len(runs) == 1
