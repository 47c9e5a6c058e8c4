"""Runs by hand: a workflow published, an event ingested and matched, and each queued attempt
executed by the test itself through the real services (no bus, no worker); and a
StepContext to call a step kind directly. The `by_hand` fixture (tests/conftest.py) keeps
a running stack from taking the attempts.
"""

from __future__ import annotations

from tests.factories import cloudevent
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events.envelope import from_structured
from workflows.runs.execution import execute_step
from workflows.runs.matching import ingest_event, match_event
from workflows.runs.models import Run, StepRun
from workflows.steps.base import StepContext


def context(**overrides) -> StepContext:
    values = {
        "run_id": 5,
        "step_id": "step",
        "attempt": 1,
        "idempotency_key": "sb-kinds-0001",
        "event": {"data": {"order": 42}},
        "steps": {},
        "outbound_allow": ("127.0.0.1/32",),
    }
    values.update(overrides)
    return StepContext(**values)


# --- runs by hand ------------------------------------------------------------------------------
class ByHand:
    def __init__(self, queued: list[int]):
        self.queued = queued

    def start(self, slug: str, body: dict, event: dict) -> Run:
        put_workflow(slug=slug, raw=body)
        publish_workflow(slug=slug)
        stored, _created = ingest_event(envelope=from_structured(event))
        (run,) = match_event(event_id=stored.pk)
        return run

    def drain(self) -> None:
        while self.queued:
            execute_step(step_run_id=self.queued.pop(0), worker="test")

    def run(self, slug: str, body: dict, event: dict | None = None) -> Run:
        run = self.start(slug, body, event or cloudevent())
        self.drain()
        run.refresh_from_db()
        return run


def step_of(run: Run, step_id: str, attempt: int | None = None) -> StepRun:
    attempts = run.steps.filter(step_id=step_id).order_by("-attempt")
    return attempts.get(attempt=attempt) if attempt else attempts.first()
