"""The run journal is the record; run and step rows are projections of it.

Real workflows of several shapes run through every real process; then the rows are checked
against the journal, damaged, found out by `rebuild_projections --check`, and rebuilt by
`rebuild_projections` into exactly what they were.
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tests.factories import cloudevent, definition, http_step, log_step
from tests.http_recorder import Recorder, Reply
from tests.test_spine import publish, send
from tests.waiting import wait_until
from workflows.events.models import DeadLetter
from workflows.runs.models import Run, RunJournal, StepRun
from workflows.runs.projections import RUN_FIELDS, STEP_FIELDS, differences

pytestmark = pytest.mark.django_db(transaction=True)

FINISHED = ("succeeded", "failed", "cancelled")
FINISHED_KINDS = tuple(f"run.{status}" for status in FINISHED)


def run_of(event_id: int) -> Run:
    return wait_until(
        lambda: Run.objects.filter(event_id=event_id).first(),
        timeout=60,
        message=f"a run of event {event_id}",
    )


def finished(run_id: int) -> Run:
    return wait_until(
        lambda: Run.objects.filter(pk=run_id, status__in=FINISHED).first(),
        timeout=60,
        message=f"run {run_id} to finish",
    )


def step(run_id: int, step_id: str, attempt: int = 1) -> StepRun | None:
    return StepRun.objects.filter(run_id=run_id, step_id=step_id, attempt=attempt).first()


def snapshot(run_ids: list[int]) -> tuple[dict, dict]:
    """Every projected field of the runs and their steps, plus the step rows' ids."""
    runs = {
        r.pk: {f: getattr(r, f) for f in RUN_FIELDS} for r in Run.objects.filter(pk__in=run_ids)
    }
    steps = {
        (s.run_id, s.step_id, s.attempt): {"id": s.pk, **{f: getattr(s, f) for f in STEP_FIELDS}}
        for s in StepRun.objects.filter(run_id__in=run_ids)
    }
    return runs, steps


def journal_rows(run_ids: list[int]) -> list[tuple]:
    return list(
        RunJournal.objects.filter(run_id__in=run_ids)
        .order_by("run_id", "seq")
        .values_list("id", "run_id", "seq", "kind", "data", "at")
    )


def rebuild(*args: str) -> str:
    out = io.StringIO()
    call_command("rebuild_projections", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def finished_runs(api, recorder) -> dict[str, int]:
    """One finished run of each shape, by name: chain, retry, condition, failing, delay,
    cancelled. Their events are sent together, so the runs interleave."""
    flaky = Recorder()  # answers 503 forever: the cancelled run's retry stays pending
    flaky.default = Reply(status=503, body={"down": True})
    try:
        yield _run_every_shape(api, recorder, flaky)
    finally:
        flaky.close()


def _run_every_shape(api, recorder: Recorder, flaky: Recorder) -> dict[str, int]:
    publish(
        api,
        "chain",
        definition(
            log_step("first"),
            {
                "id": "shape",
                "kind": "transform",
                "after": ["first"],
                "config": {"output": {"order": "{{ event.data.order }}"}},
            },
            log_step("last", after=("shape",)),
            event="com.example.chain",
        ),
    )
    recorder.answer(Reply(status=503, body={"down": True}), Reply(status=200, body={"ok": 1}))
    publish(
        api,
        "retry",
        definition(
            http_step(
                "call",
                f"{recorder.url}/retry",
                config={"send_event": True},
                retry={"max_attempts": 3, "delay_seconds": 0.2},
            ),
            event="com.example.retry",
        ),
    )
    branching = definition(
        {"id": "check", "kind": "condition", "config": {"expression": "event.data.order > 100"}},
        log_step("big"),
        log_step("small"),
        log_step("done"),
        event="com.example.condition",
    )
    branching["edges"] = [
        {"from": "check", "to": "big", "port": "true"},
        {"from": "check", "to": "small", "port": "false"},
        {"from": "big", "to": "done"},
        {"from": "small", "to": "done"},
    ]
    publish(api, "condition", branching)
    publish(
        api,
        "failing",
        definition(
            {"id": "boom", "kind": "fail", "config": {"message": "out of stock"}},
            log_step("never", after=("boom",)),
            event="com.example.failing",
        ),
    )
    publish(
        api,
        "delay",
        definition(
            {"id": "pause", "kind": "delay", "config": {"seconds": 0.5}},
            log_step("after", after=("pause",)),
            event="com.example.delay",
        ),
    )
    publish(
        api,
        "cancelled",
        definition(
            {"id": "pause", "kind": "delay", "config": {"seconds": 600}},
            log_step("never", after=("pause",)),
            http_step(
                "call",
                flaky.url,
                retry={
                    "max_attempts": 3,
                    "backoff": "fixed",
                    "delay_seconds": 600,
                    "max_delay_seconds": 600,
                },
            ),
            event="com.example.cancelled",
        ),
    )

    shapes = ("chain", "retry", "condition", "failing", "delay", "cancelled")
    events = {
        name: send(api, cloudevent(f"com.example.{name}", data={"order": 7})) for name in shapes
    }
    runs = {name: run_of(event_id).pk for name, event_id in events.items()}

    # Cancel once the delay waits and the failed call's retry is pending, so the run's
    # wind-down has a waiting step to fail and a queued attempt to skip.
    cancelled = runs["cancelled"]
    wait_until(
        lambda: (
            getattr(step(cancelled, "pause"), "status", "") == "waiting"
            and getattr(step(cancelled, "call", 2), "status", "") == "queued"
        ),
        timeout=60,
        message="the cancellable run to wait with a retry pending",
    )
    response = api.post(f"/api/v1/runs/{cancelled}/cancel", json={"reason": "changed my mind"})
    assert response.status_code == 202, response.text

    for run_id in runs.values():
        finished(run_id)
    return runs


def test_runs_of_every_shape_finish_as_expected(finished_runs):
    runs = {name: Run.objects.get(pk=pk) for name, pk in finished_runs.items()}

    assert {name: run.status for name, run in runs.items()} == {
        "chain": "succeeded",
        "retry": "succeeded",
        "condition": "succeeded",
        "failing": "failed",
        "delay": "succeeded",
        "cancelled": "cancelled",
    }
    retry = runs["retry"].pk
    assert (step(retry, "call", 1).status, step(retry, "call", 2).status) == ("failed", "succeeded")
    assert step(retry, "call", 2).not_before is not None
    assert step(runs["condition"].pk, "big").status == "skipped"
    assert DeadLetter.objects.filter(run_id=runs["failing"].pk, step_id="boom").exists()
    cancelled = runs["cancelled"].pk
    assert step(cancelled, "pause").status == "failed"
    assert step(cancelled, "call", 2).status == "skipped"


def test_the_rows_of_finished_runs_agree_with_their_journals(finished_runs):
    output = rebuild("--check")

    assert "0 run(s) differ from their journal" in output
    assert {pk: differences(Run.objects.get(pk=pk)) for pk in finished_runs.values()} == {
        pk: [] for pk in finished_runs.values()
    }


def test_each_journal_is_numbered_from_one_without_gaps_in_the_order_it_was_written(
    finished_runs,
):
    for run_id in finished_runs.values():
        entries = list(RunJournal.objects.filter(run_id=run_id).order_by("seq"))
        seqs = [entry.seq for entry in entries]

        assert seqs == list(range(1, len(entries) + 1)), (run_id, seqs)
        assert Run.objects.get(pk=run_id).seq == len(entries)
        assert [e.at for e in entries] == sorted(e.at for e in entries)
        assert entries[0].kind == "run.started"
        assert [e.kind for e in entries if e.kind in FINISHED_KINDS] == [
            f"run.{Run.objects.get(pk=run_id).status}"
        ]


def test_the_rows_of_runs_still_in_progress_agree_with_their_journals(api, recorder):
    recorder.default = Reply(status=503, body={"down": True})
    publish(
        api,
        "unfinished",
        definition(
            {"id": "pause", "kind": "delay", "config": {"seconds": 600}},
            http_step(
                "call",
                recorder.url,
                retry={"max_attempts": 2, "backoff": "fixed", "delay_seconds": 600},
            ),
            event="com.example.unfinished",
        ),
    )
    run_id = run_of(send(api, cloudevent("com.example.unfinished"))).pk
    wait_until(
        lambda: (
            getattr(step(run_id, "pause"), "status", "") == "waiting"
            and getattr(step(run_id, "call", 2), "status", "") == "queued"
        ),
        timeout=60,
        message="the run to wait with a retry pending",
    )

    assert differences(Run.objects.get(pk=run_id)) == []
    assert "0 run(s) differ" in rebuild("--check", "--run", str(run_id))


def test_rebuild_projections_finds_damaged_rows_and_recreates_them_identically(finished_runs):
    run_ids = list(finished_runs.values())
    runs_before, steps_before = snapshot(run_ids)
    journal_before = journal_rows(run_ids)
    chain, retry, condition, failing, delay, cancelled = (
        finished_runs[name]
        for name in ("chain", "retry", "condition", "failing", "delay", "cancelled")
    )

    # Lose rows, forge fields, and add a row the journal never mentions.
    step(chain, "shape").delete()
    step(retry, "call", 1).delete()
    StepRun.objects.filter(run_id=retry, step_id="call", attempt=2).update(
        status="failed", output={"forged": True}, error="forged", retryable=True
    )
    StepRun.objects.filter(run_id=condition, step_id="small").update(
        status="succeeded", port="true"
    )
    StepRun.objects.filter(run_id=delay, step_id="pause").update(
        wake_at=timezone.now(), worker="nobody", input={"forged": True}
    )
    StepRun.objects.filter(run_id=cancelled, step_id="call", attempt=2).update(
        not_before=None, idempotency_key="forged", finished_at=None
    )
    StepRun.objects.create(run_id=chain, step_id="ghost", attempt=1, kind="log", status="succeeded")
    Run.objects.filter(pk=chain).update(started_at=None)
    Run.objects.filter(pk=failing).update(status="succeeded", error="")
    Run.objects.filter(pk=cancelled).update(finished_at=None, seq=1)
    Run.objects.filter(pk=delay).update(error="forged")

    with pytest.raises(CommandError, match="6 run"):
        rebuild("--check")
    found = {pk: differences(Run.objects.get(pk=pk)) for pk in run_ids}
    rebuilt = rebuild()
    runs_after, steps_after = snapshot(run_ids)

    assert "step shape#1: missing row" in found[chain]
    assert "step ghost#1: row not in the journal" in found[chain]
    assert "step call#1: missing row" in found[retry]
    assert any(line.startswith("run.status:") for line in found[failing])
    assert any(line.startswith("run.seq:") for line in found[cancelled])
    assert "6 run(s) rebuilt from their journal" in rebuilt
    assert runs_after == runs_before
    assert set(steps_after) == set(steps_before)
    deleted = {(chain, "shape", 1), (retry, "call", 1)}
    for key, before in steps_before.items():
        after = steps_after[key]
        if key in deleted:
            assert after.pop("id") != before.pop("id")  # recreated: same fields, new row
        assert after == before, key
    assert journal_rows(run_ids) == journal_before  # rebuilding never touches the journal
    assert "0 run(s) differ" in rebuild("--check")


def test_rebuild_projections_can_check_and_rebuild_a_single_run(finished_runs):
    chain, retry = finished_runs["chain"], finished_runs["retry"]
    StepRun.objects.filter(run_id=chain, step_id="last").update(output={"forged": True})
    StepRun.objects.filter(run_id=retry, step_id="call", attempt=2).update(output={"forged": True})

    assert "0 run(s) differ" in rebuild("--check", "--run", str(finished_runs["delay"]))
    with pytest.raises(CommandError, match="1 run"):
        rebuild("--check", "--run", str(chain))
    rebuild("--run", str(chain))

    assert differences(Run.objects.get(pk=chain)) == []
    assert differences(Run.objects.get(pk=retry)) != []  # not asked for: left alone
    with pytest.raises(CommandError, match="no such run"):
        rebuild("--check", "--run", "999999999")
