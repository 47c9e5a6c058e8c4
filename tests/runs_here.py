"""Runs driven in this process, deterministically: a workflow published, an event stored and
matched as the bus consumer would, each queued step executed as a worker would; and test
clients signed in (session or API token) with a role. Shared by the replay tests and many others.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from unittest import mock

from django.core.management import call_command
from django.utils import timezone

from tests.factories import cloudevent, definition, http_step, log_step
from tests.http_recorder import Recorder
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.runs.execution import execute_step
from workflows.runs.matching import ingest_event, match_event
from workflows.runs.models import Run, StepRun


def publish(slug: str, body: dict):
    put_workflow(slug=slug, raw=body)
    return publish_workflow(slug=slug, published_by="tests")


@contextmanager
def in_this_process():
    """Keep work out of the session's stack, if another test started it: its worker would
    otherwise race this process for the steps it drives."""
    with mock.patch(
        "workflows.runs.advance.enqueue_on_commit", lambda step_run_id, kind=None: None
    ):
        yield


def trigger(slug: str, data=None, **overrides) -> Run:
    """Store an event and match it (what the bus consumer does); return the run it started.

    The event is kept off the bus (marked published without being sent), so a running
    stack's bus consumer cannot match it first."""
    event, _created = ingest_event(
        envelope=from_structured(cloudevent(data=data or {"order": 1}, **overrides)),
        publish=False,
    )
    Event.objects.filter(pk=event.pk).update(published_at=timezone.now(), matched_at=timezone.now())
    with in_this_process():
        runs = [r for r in match_event(event_id=event.pk) if r.workflow.slug == slug]
    assert len(runs) == 1, runs
    return runs[0]


def drive(run: Run) -> Run:
    """Execute the run's queued steps one by one, as a worker would, until none is left."""
    for _ in range(100):
        queued = StepRun.objects.filter(run=run, status="queued").order_by("id").first()
        if queued is None:
            break
        with in_this_process():
            execute_step(step_run_id=queued.pk, worker="tests")
    run.refresh_from_db()
    return run


def steps_of(run: Run) -> dict[str, StepRun]:
    latest: dict[str, StepRun] = {}
    for step_run in StepRun.objects.filter(run=run).order_by("attempt", "id"):
        latest[step_run.step_id] = step_run
    return latest


def calls_to(recorder: Recorder, path: str):
    return [r for r in recorder.requests if r.path == path]


def two_calls(recorder: Recorder) -> dict:
    """Step `first` calls /first, then step `second` calls /second, then `done` logs."""
    return definition(
        http_step("first", f"{recorder.url}/first", config={"json": {"step": "first"}}),
        http_step(
            "second",
            f"{recorder.url}/second",
            after=("first",),
            config={"json": {"step": "second"}},
            retry={"max_attempts": 1},
        ),
        log_step("done", after=("second",)),
    )


def command(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def token_client(client, role: str):
    _token, plaintext = create_api_token(name=f"{role}-token", role=role)
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {plaintext}"
    return client


def signed_in(client, role: str | None):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from workflows.access.roles import ensure_groups

    ensure_groups()
    user = get_user_model().objects.create_user(
        username=f"{role or 'nobody'}-user", password="not-used"
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    return client


async def batch_socket(batch_id: int, session: str):
    """A batch's live progress socket (/ws/replays/<id>/), connected with `session`."""
    from channels.testing import WebsocketCommunicator

    from orchestrator.asgi import application

    ws = WebsocketCommunicator(
        application,
        f"/ws/replays/{batch_id}/",
        headers=[(b"cookie", f"sessionid={session}".encode()), (b"origin", b"http://127.0.0.1")],
    )
    connected, _ = await ws.connect(timeout=10)
    assert connected
    return ws


async def frames_until_done(ws) -> list[str]:
    """The frames a batch socket sends until the batch says it is done."""
    frames: list[str] = []
    while 'data-status="done"' not in (frames[-1] if frames else ""):
        frames.append(await ws.receive_from(timeout=10))
    return frames
