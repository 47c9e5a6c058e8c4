"""The bus consumer runs a new run's light steps itself, in the transaction that creates the
run, while its budget per read lasts. A light run then finishes with no Celery hop, with the
journal, rows and run events a worker would leave; anything else, or past the budget, goes
to the workers as before."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext

from tests import test_light_steps
from tests.durable_runs import finished, run_of, start_run_here
from tests.factories import cloudevent, definition, http_step, log_step
from tests.test_light_steps import chain, journal_kinds
from tests.test_spine import publish, send
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events import bus
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.live import notify
from workflows.runs import execution
from workflows.runs.execution import Budget
from workflows.runs.matching import hearing, ingest_event, match_events
from workflows.runs.models import Run, RunJournal, StepRun
from workflows.runs.producers import RUN_SOURCE
from workflows.runs.projections import differences

pytestmark = pytest.mark.django_db(transaction=True)

sent = test_light_steps.sent  # the Celery messages this process would send, recorded


@pytest.fixture(autouse=True)
def unhurried(monkeypatch):
    """No time limit on the consumer's inline budget (a loaded machine must not change what
    these tests see); the step limit stays, and one test lowers it."""
    monkeypatch.setattr(execution, "BUS_INLINE_MAX_SECONDS", 3600)


def published(slug: str, *steps: dict) -> str:
    event_type = f"com.example.{slug}"
    put_workflow(slug=slug, raw=definition(*steps, event=event_type))
    publish_workflow(slug=slug)
    return event_type


def accepted(event_type: str) -> Event:
    return ingest_event(envelope=from_structured(cloudevent(event_type)), publish=False)[0]


def matched_by_the_consumer(event: Event) -> Run:
    """What consume_bus does with one read holding this event."""
    outcome = match_events(event_ids=[event.pk], inline=Budget.for_bus_read())
    assert outcome.done == {event.pk} and not outcome.failed
    [run] = outcome.started
    run.refresh_from_db()
    return run


def run_events(run: Run) -> list[str]:
    return list(
        Event.objects.filter(ce_id__startswith=f"run-{run.pk}-")
        .order_by("pk")
        .values_list("type", flat=True)
    )


def steps_of(run: Run) -> list[tuple[str, str]]:
    return list(StepRun.objects.filter(run=run).order_by("id").values_list("step_id", "status"))


def test_a_light_one_step_run_finishes_in_the_consumer_with_no_celery_task(sent):
    event_type = published("inline-one", log_step("only", message="run {{ run.id }}"))

    run = matched_by_the_consumer(accepted(event_type))

    assert run.status == "succeeded"
    assert sent == []  # no execute_step message, and no follow-up to send
    only = StepRun.objects.get(run=run)
    assert (only.status, only.worker) == ("succeeded", execution.worker_name())
    assert only.output == {"message": f"run {run.pk}"}
    assert journal_kinds(run) == [
        ("run.started", ""),
        ("step.scheduled", "only"),
        ("step.started", "only"),
        ("step.succeeded", "only"),
        ("run.succeeded", ""),
    ]
    assert differences(run) == []  # the rows are what the journal rebuilds
    assert run_events(run) == ["signalbox.run.started", "signalbox.run.succeeded"]


def test_the_consumer_leaves_the_journal_and_run_events_a_worker_would(sent):
    event_type = published("inline-same", *chain(3))
    by_consumer = matched_by_the_consumer(accepted(event_type))

    [by_worker] = match_events(event_ids=[accepted(event_type).pk]).started  # no budget
    queued = StepRun.objects.get(run=by_worker)
    assert sent[-1] == ("signalbox.execute_step", (queued.pk,))  # as before
    execution.execute_step(step_run_id=queued.pk)
    by_worker.refresh_from_db()

    assert by_consumer.status == by_worker.status == "succeeded"
    assert journal_kinds(by_consumer) == journal_kinds(by_worker)
    assert steps_of(by_consumer) == steps_of(by_worker)
    assert run_events(by_consumer) == run_events(by_worker)
    assert differences(by_consumer) == []


def test_the_run_and_its_light_steps_commit_together_with_one_journal_insert(sent):
    event_type = published("inline-once", *chain(3))
    event = accepted(event_type)

    with CaptureQueriesContext(connection) as captured:
        run = matched_by_the_consumer(event)

    statements = [q["sql"] for q in captured.captured_queries]
    assert sum(sql.startswith("COMMIT") for sql in statements) == 1, statements
    assert sum("FOR UPDATE" in sql for sql in statements) == 0  # the new run is ours alone
    assert sum('INSERT INTO "workflows_runjournal"' in sql for sql in statements) == 1
    assert sum('INSERT INTO "workflows_event"' in sql for sql in statements) == 1
    assert sum(sql.startswith('UPDATE "workflows_run" ') for sql in statements) == 1
    assert not [sql for sql in statements if sql.startswith("SAVEPOINT")]
    assert run.status == "succeeded"
    assert RunJournal.objects.filter(run=run).count() == run.seq == 11


def test_a_side_effecting_first_step_goes_to_the_workers(sent):
    event_type = published("inline-http", http_step("call", "http://127.0.0.1:9/"))

    run = matched_by_the_consumer(accepted(event_type))

    call = StepRun.objects.get(run=run)
    assert (run.status, call.status) == ("running", "queued")
    assert sent == [("signalbox.execute_step", (call.pk,))]


def test_past_its_budget_the_consumer_hands_the_rest_of_a_chain_to_the_workers(sent, settings):
    settings.SIGNALBOX = {**settings.SIGNALBOX, "BUS_INLINE_STEPS": 2}
    event_type = published("inline-budget", *chain(5))

    run = matched_by_the_consumer(accepted(event_type))

    assert steps_of(run) == [("s0", "succeeded"), ("s1", "succeeded"), ("s2", "queued")]
    s2 = StepRun.objects.get(run=run, step_id="s2")
    assert sent == [("signalbox.execute_step", (s2.pk,))]
    execution.execute_step(step_run_id=s2.pk)
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert differences(run) == []


def test_a_spent_budget_starts_the_next_runs_the_usual_way(sent, settings):
    settings.SIGNALBOX = {**settings.SIGNALBOX, "BUS_INLINE_STEPS": 1}
    event_type = published("inline-spent", log_step("only"))
    events = [accepted(event_type) for _ in range(2)]

    outcome = match_events(event_ids=[e.pk for e in events], inline=Budget.for_bus_read())

    first, second = sorted(outcome.started, key=lambda r: r.pk)
    first.refresh_from_db()
    assert first.status == "succeeded"
    queued = StepRun.objects.get(run=second)
    assert queued.status == "queued"
    assert ("signalbox.execute_step", (queued.pk,)) in sent


class Died(BaseException):
    """The consumer process dying (nothing catches it, no message is sent on the way out)."""


def test_a_consumer_dying_inside_a_chain_leaves_nothing_and_the_redelivery_runs_it(
    sent, monkeypatch
):
    event_type = published("inline-died", *chain(3))
    event = accepted(event_type)
    real = execution._run_light

    def dies_at_the_second_step(run, step, *args):
        if step.id == "s1":
            raise Died
        return real(run, step, *args)

    with monkeypatch.context() as patch, pytest.raises(Died):
        patch.setattr(execution, "_run_light", dies_at_the_second_step)
        match_events(event_ids=[event.pk], inline=Budget.for_bus_read())

    assert not Run.objects.filter(event=event).exists()  # s0 went with its transaction
    assert sent == []
    event.refresh_from_db()
    assert event.matched_at is None  # the entry was never acknowledged: it is read again
    run = matched_by_the_consumer(event)
    assert run.status == "succeeded"
    assert steps_of(run) == [("s0", "succeeded"), ("s1", "succeeded"), ("s2", "succeeded")]
    assert differences(run) == []


def test_a_database_error_in_the_inline_step_leaves_no_run_and_the_event_unmatched(
    sent, monkeypatch
):
    event_type = published("inline-db-error", log_step("only"))
    event = accepted(event_type)

    def broken(*args, **kwargs):
        raise OperationalError("the database went away")

    with monkeypatch.context() as patch, pytest.raises(OperationalError):
        patch.setattr(execution, "_run_light", broken)
        match_events(event_ids=[event.pk], inline=Budget.for_bus_read())

    assert not Run.objects.filter(event=event).exists()  # rolled back with its step
    event.refresh_from_db()
    assert event.matched_at is None  # its entry stays pending and is read again
    run = matched_by_the_consumer(event)
    assert run.status == "succeeded"


def test_the_bus_consumer_process_runs_a_light_run_itself(api, stack):
    publish(api, "inline-stack", definition(log_step("only"), event="com.example.inline-stack"))

    run = finished(run_of(send(api, cloudevent("com.example.inline-stack"))).pk)

    only = StepRun.objects.get(run=run)
    assert run.status == "succeeded"
    assert only.worker.endswith(f":{stack.processes['bus'].pid}")


def test_the_run_events_of_a_read_reach_the_bus_in_one_round_trip(sent, monkeypatch):
    event_type = published("inline-outbox", log_step("only"))
    events = [accepted(event_type) for _ in range(3)]
    calls = []
    real = bus.publish_many

    def counting(batch):
        calls.append(sorted(e.type for e in batch))
        return real(batch)

    monkeypatch.setattr(bus, "publish_many", counting)
    outcome = match_events(event_ids=[e.pk for e in events], inline=Budget.for_bus_read())

    assert len(outcome.started) == 3
    assert calls == [["signalbox.run.started"] * 3 + ["signalbox.run.succeeded"] * 3]
    for run in outcome.started:
        published_at = Event.objects.filter(ce_id__startswith=f"run-{run.pk}-").values_list(
            "published_at", flat=True
        )
        assert len(published_at) == 2 and all(published_at)


def test_a_run_moved_several_times_in_one_transaction_sends_one_hint_the_last(monkeypatch):
    hints = []
    monkeypatch.setattr(notify, "_send", lambda groups, message: hints.append(message))

    with transaction.atomic():
        for seq in (2, 3, 5):
            notify.run_changed(run_id=7, seq=seq, workflow_slug="w", status="running")
        notify.run_changed(run_id=8, seq=1, workflow_slug="w", status="running")
        assert hints == []  # nothing before commit
    notify.run_changed(run_id=7, seq=6, workflow_slug="w", status="succeeded")

    assert [(h["run"], h["seq"]) for h in hints] == [(7, 5), (8, 1), (7, 6)]


def test_with_no_inline_steps_configured_the_workers_run_every_step(sent, settings):
    settings.SIGNALBOX = {**settings.SIGNALBOX, "BUS_INLINE_STEPS": 0}
    event_type = published("inline-off", log_step("only"))

    run = matched_by_the_consumer(accepted(event_type))

    only = StepRun.objects.get(run=run)
    assert (run.status, only.status) == ("running", "queued")
    assert sent == [("signalbox.execute_step", (only.pk,))]


def test_a_read_asks_once_which_run_event_types_have_a_schema(sent):
    event_type = published("inline-schemas", log_step("only"))
    events = [accepted(event_type) for _ in range(4)]

    with CaptureQueriesContext(connection) as captured:
        match_events(event_ids=[e.pk for e in events], inline=Budget.for_bus_read())

    lookups = [q for q in captured.captured_queries if 'FROM "workflows_eventtype"' in q["sql"]]
    # Every signalbox.run.* type at once, in the query that asks which types a run waits for.
    assert len(lookups) == 1, [q["sql"] for q in lookups]


def test_a_run_event_id_already_taken_is_skipped_and_the_run_still_moves(sent):
    run = start_run_here("inline-forged", log_step("only"))
    forged = ingest_event(
        envelope=from_structured(
            cloudevent("signalbox.run.succeeded", source=RUN_SOURCE, id=f"run-{run.pk}-succeeded")
        ),
        publish=False,
    )[0]

    assert execution.execute_step(step_run_id=StepRun.objects.get(run=run).pk) is True

    run.refresh_from_db()
    assert run.status == "succeeded"
    assert Event.objects.get(source=RUN_SOURCE, ce_id=f"run-{run.pk}-succeeded") == forged


def test_a_schema_registered_for_a_run_event_type_still_holds_in_a_read(sent):
    from workflows.events.models import DeadLetter
    from workflows.events.schemas import register_schema

    event_type = published("inline-run-schema", log_step("only"))
    register_schema(
        event_type="signalbox.run.succeeded",
        schema={"type": "object", "required": ["never-sent"]},
    )

    run = matched_by_the_consumer(accepted(event_type))

    assert run.status == "succeeded"  # the run still moves; its event is a dead letter
    letter = DeadLetter.objects.get(kind="event", run=run)
    assert "does not match its schema" in letter.reason
    assert not Event.objects.filter(source=RUN_SOURCE, ce_id=f"run-{run.pk}-succeeded").exists()
    assert Event.objects.filter(source=RUN_SOURCE, ce_id=f"run-{run.pk}-started").exists()


def test_the_runs_of_one_read_commit_together_with_their_events_marked_matched(sent, monkeypatch):
    event_type = published("inline-one-commit", log_step("only"))
    events = [accepted(event_type) for _ in range(5)]
    commits = []
    real_commit = connection._commit
    monkeypatch.setattr(connection, "_commit", lambda: (commits.append(1), real_commit())[1])

    with CaptureQueriesContext(connection) as captured:
        outcome = match_events(
            event_ids=[e.pk for e in events],
            inline=Budget.for_bus_read(),
            heard=hearing([event_type]),  # as consume_bus passes what settle_unheard asked
        )

    assert outcome.done == {e.pk for e in events} and not outcome.failed
    assert [r.status for r in Run.objects.filter(event__in=events)] == ["succeeded"] * 5
    assert len(commits) == 1  # not one per run, nor one more for marking them matched
    sqls = [q["sql"] for q in captured.captured_queries]
    assert not any(s.startswith("SAVEPOINT") for s in sqls), sqls
    assert Event.objects.filter(pk__in=[e.pk for e in events], matched_at=None).count() == 0


def test_a_light_step_reading_an_earlier_ones_output_sees_it_in_the_read_transaction(sent):
    # The consumer holds back a light step's finished row, to insert it with the run's
    # last writes; a later step that reads it (upstream outputs) must still find it.
    event_type = published(
        "inline-upstream",
        {"id": "a", "kind": "transform", "config": {"output": {"v": "from a"}}},
        {
            "id": "b",
            "kind": "transform",
            "config": {"output": {"seen": "{{ steps.a.output.v }}"}},
            "after": ["a"],
        },
        {
            "id": "c",
            "kind": "condition",
            "config": {"expression": "steps.b.output.seen == 'from a'"},
            "after": ["b"],
        },
    )
    event = accepted(event_type)

    outcome = match_events(
        event_ids=[event.pk], inline=Budget.for_bus_read(), heard=hearing([event_type])
    )

    [run] = outcome.started
    run.refresh_from_db()
    assert run.status == "succeeded" and sent == []
    assert steps_of(run) == [("a", "succeeded"), ("b", "succeeded"), ("c", "succeeded")]
    assert StepRun.objects.get(run=run, step_id="b").output == {"seen": "from a"}
    assert StepRun.objects.get(run=run, step_id="c").port == "true"
    assert differences(run) == []


def test_attempt_ids_keep_the_order_the_consumer_scheduled_the_steps_in(sent):
    # The consumer holds a light step's finished row back; a skipped step and a step for the
    # workers scheduled after it must still get later ids (pages list steps by id).
    body = definition(
        log_step("first"),
        {"id": "check", "kind": "condition", "config": {"expression": "1 > 2"}, "after": ["first"]},
        log_step("big"),
        http_step("call", "http://127.0.0.1:9/"),
        event="com.example.inline-order",
    )
    body["edges"] = [
        {"from": "check", "to": "big", "port": "true"},
        {"from": "check", "to": "call", "port": "false"},
    ]
    put_workflow(slug="inline-order", raw=body)
    publish_workflow(slug="inline-order")

    run = matched_by_the_consumer(accepted("com.example.inline-order"))

    assert steps_of(run) == [
        ("first", "succeeded"),
        ("check", "succeeded"),
        ("big", "skipped"),
        ("call", "queued"),
    ]
    assert sent == [("signalbox.execute_step", (StepRun.objects.get(run=run, step_id="call").pk,))]
    assert differences(run) == []


def test_a_limit_holds_for_the_runs_of_one_read(sent):
    # Each run's last writes wait for the next run's start; they are sent before it, so
    # the limit sees the first run running, not queued as its row was inserted.
    event_type = "com.example.inline-limited"
    raw = definition(http_step("call", "http://127.0.0.1:9/"), event=event_type)
    raw["concurrency"] = {"max_runs": 1}
    put_workflow(slug="inline-limited", raw=raw)
    publish_workflow(slug="inline-limited")
    events = [accepted(event_type) for _ in range(2)]

    outcome = match_events(
        event_ids=[e.pk for e in events], inline=Budget.for_bus_read(), heard=hearing([event_type])
    )

    assert outcome.done == {e.pk for e in events} and not outcome.failed
    statuses = [r.status for r in Run.objects.filter(event__in=events).order_by("pk")]
    assert statuses == ["running", "queued"]


def test_the_hearing_reads_the_subscribed_events_of_a_read_and_no_others():
    event_type = published("inline-heard", log_step("only"))
    listened, other = accepted(event_type), accepted("com.example.nobody-listens")

    heard = hearing([event_type, other.type], events=[listened.pk, other.pk])

    assert set(heard.events) == {listened.pk}
    assert heard.events[listened.pk].data == listened.data
    assert heard.events_of([listened.pk]) == {listened.pk: heard.events[listened.pk]}
    # One it did not read (not asked, or of no subscribed type): matching reads them itself.
    assert heard.events_of([listened.pk, other.pk]) is None
    assert heard.events_of([listened.pk + 1000]) is None


def test_a_read_holding_an_already_started_run_is_matched_again_event_by_event(sent):
    event_type = published("inline-redelivered", log_step("only"))
    first, second = accepted(event_type), accepted(event_type)
    [earlier] = match_events(event_ids=[first.pk], inline=Budget.for_bus_read()).started

    # A re-delivery of the first entry read with a new one: the first's run exists (its
    # INSERT fails), which undoes the read's one transaction; event by event, the new one
    # still starts its run, and the first starts nothing twice.
    outcome = match_events(
        event_ids=[first.pk, second.pk],
        inline=Budget.for_bus_read(),
        heard=hearing([event_type]),
    )

    assert outcome.done == {first.pk, second.pk} and not outcome.failed
    assert [r.event_id for r in outcome.started] == [second.pk]
    assert Run.objects.filter(event=first).get() == earlier
    assert Run.objects.get(event=second).status == "succeeded"
    assert RunJournal.objects.filter(run__event=second, kind="run.succeeded").count() == 1


def test_the_run_events_of_a_read_are_marked_published_by_the_next_reads_update(sent):
    from workflows.runs import matching

    matching.published_marks.take()  # none left by another test
    event_type = published("inline-marks", log_step("only"))
    first, second = accepted(event_type), accepted(event_type)

    match_events(event_ids=[first.pk], inline=Budget.for_bus_read(), heard=hearing([event_type]))
    run = Run.objects.get(event=first)
    run_events = Event.objects.filter(source=RUN_SOURCE, ce_id__startswith=f"run-{run.pk}-")
    # On the bus (appended after commit), their mark left for the next read.
    assert run_events.count() == 2 and not run_events.filter(published_at__isnull=False).exists()
    assert matching.published_marks.waiting

    with CaptureQueriesContext(connection) as captured:
        match_events(
            event_ids=[second.pk], inline=Budget.for_bus_read(), heard=hearing([event_type])
        )

    assert not run_events.filter(published_at__isnull=True).exists()
    updates = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("UPDATE")]
    marking = [u for u in updates if '"workflows_event"' in u.split("SET")[0]]
    assert len(marking) == 1 and "published_at" in marking[0] and "matched_at" in marking[0]
    assert Event.objects.get(pk=second.pk).matched_at is not None
    # The second read's own run events: marked when the consumer finds nothing to read.
    matching.flush_published_marks()
    assert not Event.objects.filter(source=RUN_SOURCE, published_at__isnull=True).exists()
