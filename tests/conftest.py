from __future__ import annotations

import httpx
import pytest
from django.conf import settings
from django.utils import timezone
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from tests import db_teardown
from tests.factories import definition
from tests.http_recorder import Recorder, Reply
from tests.million_runs import million_runs, run_million_row_tests_last
from tests.runs_here import drive, publish, trigger, two_calls
from tests.stack import make_stack
from tests.steps_by_hand import ByHand
from workflows import tasks
from workflows.access.tokens import create_api_token
from workflows.events.models import Event

# Property tests judge behaviour, not speed: on a loaded 2-core CI machine generation can be
# slow, which must not fail the run.
hypothesis_settings.register_profile(
    "signalbox",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
hypothesis_settings.load_profile("signalbox")

db_teardown.install()

# Registered here (one definition for every file), so the million rows are made once per
# process: tests/million_runs.py.
__all__ = ["million_runs"]


def pytest_collection_modifyitems(config, items):
    run_million_row_tests_last(items)


@pytest.fixture(scope="session")
def stack(django_db_setup, django_db_blocker):
    """Every Signalbox process, running for real against this run's test database.

    Tests that use it must commit their data (`transactional_db`), since the processes
    read the database through their own connections."""
    running = make_stack(settings.DATABASES["default"]["NAME"])
    running.start_all()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture
def recorder():
    from workflows.infra import circuit

    server = Recorder()
    # Ports are recycled: a breaker left open by an earlier test on this host:port must
    # not fail this one fast.
    circuit.reset(f"127.0.0.1:{server.port}")
    yield server
    server.close()


@pytest.fixture
def api_token(transactional_db) -> str:
    _token, plaintext = create_api_token(name="tests", role="admin")
    return plaintext


@pytest.fixture
def api(stack, api_token):
    """An HTTP client for the real ASGI server, authenticated with an admin token."""
    with httpx.Client(
        base_url=stack.base_url,
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=15,
    ) as client:
        yield client


# --- runs to replay (test_replay*.py, test_cancel_audited.py) ------------------------------


@pytest.fixture
def failed_run(db, recorder):
    """A run whose first step succeeded and whose second step got a 500 and failed."""
    recorder.answer(Reply(200, {"first": "ok"}), Reply(500, {"error": "down"}))
    publish("two-calls", two_calls(recorder))
    run = drive(trigger("two-calls", {"order": 7}))
    assert run.status == "failed", run.error
    return run


@pytest.fixture
def chain(db):
    """A chain of three transforms (a -> b -> c) that succeeded."""
    publish(
        "chain",
        definition(
            {"id": "a", "kind": "transform", "config": {"output": "{{ event.data.order }}"}},
            {
                "id": "b",
                "kind": "transform",
                "config": {"output": "{{ steps.a.output * 2 }}"},
                "after": ["a"],
            },
            {
                "id": "c",
                "kind": "transform",
                "config": {"output": "{{ steps.b.output + 1 }}"},
                "after": ["b"],
            },
        ),
    )
    run = drive(trigger("chain", {"order": 5}))
    assert run.status == "succeeded"
    return run


# --- runs by hand (test_step_kind*.py, test_http_request_codes.py) ---------------------------


@pytest.fixture
def by_hand(transactional_db, monkeypatch):
    """Runs by hand (tests/steps_by_hand.py): every attempt is executed by the test."""
    queued: list[int] = []
    # No Celery message and no bus entry: this test executes every attempt itself, and a
    # running stack (other tests' processes) must not take them.
    monkeypatch.setattr(
        "workflows.runs.advance.enqueue_on_commit",
        lambda step_run_id, kind=None: queued.append(step_run_id),
    )

    def on_the_bus(event):
        # Marked matched as well, so a stack's outbox relay never takes it either.
        now = timezone.now()
        Event.objects.filter(pk=event.pk).update(published_at=now, matched_at=now)
        return True

    monkeypatch.setattr("workflows.events.bus.publish", on_the_bus)
    monkeypatch.setenv("SIGNALBOX_PYTHON_MODULES", "tests.python_steps")
    return ByHand(queued)


# --- Celery messages recorded, not sent (test_durability.py, test_celery_delivery.py) -------


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, tuple, dict]]:
    """Celery messages this process would send, recorded instead of sent (a running worker
    would otherwise take them): (task name, args, every other option)."""
    recorded: list[tuple[str, tuple, dict]] = []
    for task in (tasks.execute_step_task, tasks.run_finished_task):

        def apply_async(args=None, kwargs=None, _name=task.name, **options):
            # The queue a step goes to is tested in test_step_queues.py.
            options.pop("queue", None)
            recorded.append((_name, tuple(args or ()), {**options, **(kwargs or {})}))

        monkeypatch.setattr(task, "apply_async", apply_async)
    return recorded
