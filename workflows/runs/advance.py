"""Advance runs and record their steps' results.

The rules: `advance_locked` holds the run's row lock while it asks the engine what to do and
writes the result; results are recorded once, fenced by the attempt's status; enqueueing,
pushes and resuming a parent run happen only after commit. Every move is appended to the
run's journal with what `rebuild_projections` needs to recreate the run and step rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models.base import ModelState
from django.utils import timezone

from workflows.catalog.definition_parsing import definition_for
from workflows.core import engine
from workflows.core.states import TERMINAL_RUN, RunStatus, StepStatus, check_run_move, step_move
from workflows.events.models import DeadLetter
from workflows.infra import row_sql
from workflows.live import notify
from workflows.runs import task_queue
from workflows.runs.models import EventWaiter, Run, RunJournal, StepRun
from workflows.runs.producers import emit_run_events, send_run_events
from workflows.runs.transitions import move_step

log = logging.getLogger("signalbox.runs")
# The timers below are the scheduler's sweeps' (workflows/runs/sweeps.py), kept here where tests
# and operators have always found them.
# A queued attempt whose message has not been picked up this long is enqueued again (the
# message was lost, e.g. Redis restarted). Duplicates are harmless: the claim is conditional.
REENQUEUE_AFTER = timedelta(seconds=settings.SIGNALBOX["REENQUEUE_AFTER_SECONDS"])
# An attempt running longer than its step's timeout (default 15 min) plus this grace hangs
# (or, without heartbeats, lost its worker): it is failed (retryably, code "timeout"); a
# late result is fenced out. A dead worker is noticed sooner, by its heartbeat.
LEASE_GRACE = timedelta(seconds=30)
DEFAULT_STEP_TIMEOUT = timedelta(minutes=15)


def idempotency_key(run_id: int, step_id: str) -> str:
    digest = hashlib.sha256(f"signalbox:run:{run_id}:step:{step_id}".encode()).hexdigest()
    return f"sb-{digest[:32]}"


def run_state(run: Run) -> engine.RunState:
    write_held_steps(run)
    latest: dict[str, engine.StepState] = {}
    for step_id, status, attempt, error, port in run.steps.order_by("attempt", "id").values_list(
        "step_id", "status", "attempt", "error", "port"
    ):
        latest[step_id] = engine.StepState(StepStatus(status), attempt, error, port)
    return engine.RunState(run_id=run.pk, status=RunStatus(run.status), steps=latest)


def journal(run: Run, kind: str, **data) -> None:
    """Append to the run's journal. Caller holds the run lock, so seq is gap-free. Inside
    `journal_batch` the entry is written with the others of the batch, in one INSERT."""
    run.seq += 1
    # Built as unpickling builds a model (no __init__, as intake.new_event): the keyword
    # path cost a light run's engine about a tenth of its time (five entries per run).
    entry = RunJournal.__new__(RunJournal)
    entry._state = ModelState()
    entry.__dict__.update(id=None, run_id=run.pk, seq=run.seq, kind=kind, data=data, at=None)
    pending = getattr(run, "_journal_pending", None)
    if pending is None:
        row_sql.insert([entry])
    else:
        pending.append(entry)


@contextmanager
def journal_batch(run: Run) -> Iterator[None]:
    """Collect the journal entries appended inside into one INSERT at the end of the block
    (still inside the caller's transaction). Nested batches join the outermost one."""
    if getattr(run, "_journal_pending", None) is not None:
        yield
        return
    run._journal_pending = []  # type: ignore[attr-defined]
    try:
        yield
        if run._journal_pending:  # type: ignore[attr-defined]
            row_sql.insert(run._journal_pending)  # type: ignore[attr-defined]
    finally:
        run._journal_pending = None  # type: ignore[attr-defined]


def save_run(run: Run, fields: list[str]) -> None:
    """Write the run's changed columns now, or, inside `one_run_write`, once at its end."""
    deferred = getattr(run, "_deferred_fields", None)
    if deferred is None:
        write_run(run, fields)
    else:
        deferred.update(fields)


def write_run(run: Run, fields) -> None:
    """`run.save(update_fields=fields)`, without the ORM building the UPDATE each time."""
    if not row_sql.update(run, sorted(fields)):
        raise Run.DoesNotExist(f"run {run.pk} is gone")


@contextmanager
def one_run_write(run: Run, *, later: list | None = None) -> Iterator[None]:
    """For a run created in the caller's transaction and moved several times in it (the bus
    consumer running its light steps): the run row is written once, at the end, with its
    finished steps, its journal entries and its run events, all in one round trip. Nothing
    reads the row in between (nobody else can see it; the light path reads the run from
    memory). With `later` (a list), those writes are not sent at the end but appended to
    it, as a function that sends them on a cursor (in a pipeline) and returns what to call
    once they are answered: the caller sends them with its next writes (see
    `send_later`), before anything else reads the database."""
    run._deferred_fields = set()  # type: ignore[attr-defined]
    run._unsaved_events = []  # type: ignore[attr-defined]
    run._unsaved_steps = []  # type: ignore[attr-defined]  # see write_result
    run._journal_pending = []  # type: ignore[attr-defined]  # the outermost batch: below
    try:
        yield
        steps, entries = run._unsaved_steps, run._journal_pending  # type: ignore[attr-defined]
        fields, events = run._deferred_fields, run._unsaved_events  # type: ignore[attr-defined]

        def send(cursor) -> Callable[[], None]:
            row_sql.insert(steps, cursor=cursor)
            row_sql.insert(entries, cursor=cursor)
            if fields:  # the row was inserted in this transaction: it is there
                row_sql.update(run, sorted(fields), cursor=cursor)
            return send_run_events(run, events)

        if later is not None:
            later.append(send)
        else:
            send_later([send])
    finally:
        run._deferred_fields = run._unsaved_events = None  # type: ignore[attr-defined]
        run._unsaved_steps = run._journal_pending = None  # type: ignore[attr-defined]


def send_later(later: list) -> None:
    """Send the writes `one_run_write` left in `later`, in one round trip, and empty it."""
    if not later:
        return
    with row_sql.pipelined() as cursor:
        answered = [send(cursor) for send in later]
    later.clear()
    for finish in answered:  # after the pipeline's answer: the run events get their ids
        finish()


def write_held_steps(run: Run) -> None:
    """Insert the finished attempts `one_run_write` holds back (see write_result) now:
    before anything reads the run's steps from the database."""
    held = getattr(run, "_unsaved_steps", None)
    if held:
        row_sql.insert(held)
        held.clear()


def hold_or_insert(run: Run, step_run: StepRun, *, returning_pk: bool = False) -> None:
    """A finished attempt written now, or, inside `one_run_write`, held to go in with the
    run's last writes, after the attempts held before it (see write_result)."""
    held = getattr(run, "_unsaved_steps", None)
    if held is not None:
        held.append(step_run)
    else:
        row_sql.insert([step_run], returning_pk=returning_pk)


def insert_after_held(run: Run, step_run: StepRun) -> None:
    """Insert a new attempt (getting its key), after the finished attempts `one_run_write`
    holds, in the same round trip: attempt ids keep the order the steps were scheduled in,
    which is the order a run's steps are shown in."""
    held = getattr(run, "_unsaved_steps", None)
    if not held:
        row_sql.insert([step_run], returning_pk=True)
        return
    with row_sql.pipelined() as cursor:  # the key's fetch ends the pipeline: one round trip
        row_sql.insert(held, cursor=cursor)
        row_sql.insert([step_run], returning_pk=True, cursor=cursor)
    held.clear()


def written_once(run: Run) -> bool:
    """Inside `one_run_write`: the run was created in this transaction."""
    return getattr(run, "_deferred_fields", None) is not None


def _iso(value) -> str | None:
    return value.isoformat() if value else None


class Continuation:
    """Offered to `advance_locked` by a worker that may run one more light step itself, in
    the same task. The first step scheduled due now is kept here, instead of being sent as
    a Celery message, when it is light (the worker runs it after commit); the others go to
    the queue as usual, and are not overtaken: when the first is not light, none is kept."""

    def __init__(self, known: tuple[int, engine.RunState] | None = None) -> None:
        self.step_run_id: int | None = None
        self.step_run: StepRun | None = None  # the kept attempt as written
        self.offered = False
        # (run.seq, state) as this worker's last transaction on the run left them: when the
        # run's seq is still that under the next lock, nothing else moved the run (every
        # move is journaled under the lock, bumping seq) and the state need not be re-read.
        self.known = known
        self.after: tuple[int, engine.RunState] | None = None
        self.run: Run | None = None  # the run as this transaction read it (for the next)

    def would_take(self, kind: str) -> bool:
        from workflows.steps import registry

        known = registry.find(kind)
        return not self.offered and known is not None and known.light

    def take(self, step_run: StepRun, kind: str) -> bool:
        taken = self.would_take(kind)
        self.offered = True
        if taken:
            self.step_run_id, self.step_run = step_run.pk, step_run
        return taken


def advance_locked(
    run: Run,
    happening: engine.Happening,
    *,
    continuation: Continuation | None = None,
    state: engine.RunState | None = None,
) -> list[engine.Command]:
    """Ask the engine what follows `happening` and carry it out. The caller holds the run's
    row lock (or created the row in this transaction). The journal entries it appends are
    written together, in one INSERT."""
    with journal_batch(run):
        commands, state = _advance_locked(run, happening, continuation, state)
    if continuation is not None and run.status not in TERMINAL_RUN:
        continuation.after = (run.seq, state_after(state, run, commands))
    return commands


def state_after(
    state: engine.RunState, run: Run, commands: list[engine.Command]
) -> engine.RunState:
    """The state `run_state` would read after `commands` were carried out on `state`."""
    steps = dict(state.steps)
    for command in commands:
        if isinstance(command, engine.ScheduleStep):
            steps[command.step_id] = engine.StepState(StepStatus.QUEUED, command.attempt, "", "")
        elif isinstance(command, engine.SkipStep):
            steps[command.step_id] = engine.StepState(StepStatus.SKIPPED, 1, "", "")
    return engine.RunState(run_id=run.pk, status=RunStatus(run.status), steps=steps)


def known_state(
    run: Run, continuation: Continuation | None, finished: engine.StepFinished
) -> engine.RunState | None:
    """The run's state with `finished` recorded, from what this worker's last transaction on
    the run left (None when the run moved since: it is read again)."""
    if continuation is None or continuation.known is None:
        return None
    seq, state = continuation.known
    if seq != run.seq or state.steps.get(finished.step_id) is None:
        return None
    if state.steps[finished.step_id].attempt != finished.attempt:
        return None
    steps = dict(state.steps)
    steps[finished.step_id] = engine.StepState(
        StepStatus.SUCCEEDED if finished.succeeded else StepStatus.FAILED,
        finished.attempt,
        finished.error,
        finished.port if finished.succeeded else "",
    )
    return engine.RunState(run_id=run.pk, status=RunStatus(run.status), steps=steps)


def _advance_locked(
    run: Run,
    happening: engine.Happening,
    continuation: Continuation | None,
    state: engine.RunState | None,
) -> tuple[list[engine.Command], engine.RunState]:
    definition = definition_for(run.version)
    state = state or run_state(run)
    commands = engine.decide(definition, state, happening)
    now = timezone.now()
    for command in commands:
        if isinstance(command, engine.MarkRunRunning):
            check_run_move(run.status, RunStatus.RUNNING)
            run.status, run.started_at = RunStatus.RUNNING, now
            journal(run, "run.started", at=_iso(now))
        elif isinstance(command, engine.ScheduleStep):
            _schedule_step(run, command, definition.steps[command.step_id].kind, now, continuation)
        elif isinstance(command, engine.SkipStep):
            skipped = StepRun(
                run=run,
                step_id=command.step_id,
                attempt=1,
                status=StepStatus.SKIPPED,
                kind=definition.steps[command.step_id].kind,
                port="",
                finished_at=now,
                idempotency_key=idempotency_key(run.idempotency_base or run.pk, command.step_id),
            )
            hold_or_insert(run, skipped)
            journal(
                run,
                "step.skipped",
                step=command.step_id,
                attempt=1,
                step_kind=definition.steps[command.step_id].kind,
                at=_iso(now),
            )
        elif isinstance(command, engine.FinishRun):
            check_run_move(run.status, command.status)
            run.status, run.finished_at, run.error = command.status, now, command.error
            journal(run, f"run.{command.status}", error=command.error, at=_iso(now))
            _wind_down(run, now, state)
            if (
                command.status == RunStatus.FAILED
                and isinstance(happening, engine.StepFinished)
                and run.origin != "shadow"
            ):  # a shadow run's failure is a finding
                _dead_letter_step(run, happening)
    if commands:
        save_run(run, ["status", "started_at", "finished_at", "error", "seq"])
        # The run's start/finish as events, committed with the state change (or not at all).
        if run.origin != "shadow":  # a shadow run must start nothing elsewhere
            emit_run_events(run=run, commands=commands)
        notify.run_changed(
            run_id=run.pk, seq=run.seq, workflow_slug=run.workflow.slug, status=run.status
        )
    return commands, state


def _wind_down(run: Run, now, state: engine.RunState | None = None) -> None:
    """A finished run starts nothing more: queued attempts are skipped, waits dropped, and
    whoever waits on this run (a parent, queued runs of the workflow) is told after commit.
    `state` (read under this lock) spares the look for attempts when none is pending."""
    pending = (StepStatus.QUEUED, StepStatus.WAITING)
    if state is None or any(s.status in pending for s in state.steps.values()):
        found = list(run.steps.filter(status__in=pending).order_by("id"))
        # Queued attempts first, then waiting ones (the order the journal always had).
        for step_run in sorted(found, key=lambda s: s.status != StepStatus.QUEUED):
            if step_run.status == StepStatus.QUEUED:
                # Under the run's lock, which every claim of the run's attempts takes too,
                # the attempt read as queued is still queued: the move cannot miss.
                if not move_step(
                    step_run.pk,
                    source=StepStatus.QUEUED,
                    target=StepStatus.SKIPPED,
                    finished_at=now,
                ):
                    continue
                journal(
                    run,
                    "step.skipped",
                    step=step_run.step_id,
                    attempt=step_run.attempt,
                    at=_iso(now),
                )
                continue
            # As record_result would: no wake-up left; the output parked with it is kept
            # (and journaled, so the projection keeps it too).
            if not move_step(
                step_run.pk,
                source=StepStatus.WAITING,
                target=StepStatus.FAILED,
                finished_at=now,
                error=f"run {run.status}",
                wake_at=None,
            ):
                continue
            journal(
                run,
                "step.failed",
                step=step_run.step_id,
                attempt=step_run.attempt,
                error=f"run {run.status}",
                output=step_run.output,
                at=_iso(now),
            )
    if not written_once(run):  # a run created in this transaction has no waits yet
        EventWaiter.objects.filter(run=run).delete()
    if _follow_up_needed(run):
        task_queue.send_on_commit(task_queue.RUN_FINISHED, run.pk)
    else:
        # Looked for after the commit, which makes this run's end visible: the look is
        # then off the run's own path. Robust: a failure costs only the message, which the
        # scheduler's sweep stands in for.
        workflow_id, run_id = run.workflow_id, run.pk
        transaction.on_commit(lambda: _follow_up_if_queued(workflow_id, run_id), robust=True)


def _follow_up_needed(run: Run) -> bool:
    """Whether the `run_finished` task surely has something to do for this run: resume a
    parent step, cancel children, or admit runs its version's limits may have queued. Most
    runs have none of these, and the message (a send, a worker's dispatch, two reads) cost
    them about a sixth of a light run's work."""
    if run.parent_step_id or run.status == RunStatus.CANCELLED:
        return True
    concurrency = definition_for(run.version).concurrency
    return bool(concurrency.max_runs or concurrency.ordered)


def _follow_up_if_queued(workflow_id: int, run_id: int) -> None:
    """Send the follow-up when runs of the workflow are queued (under another version, one
    with limits, whose slots this run's version shares). A queued run committed after this
    look is started by the next run of the workflow to finish, or by the scheduler's sweep
    for stalled ones (sweeps.recover_lost_follow_ups), as when the message itself is lost."""
    # Written out: every run that finishes asks it (the ORM took longer to build it than
    # the database to answer, through the workflow/status index).
    quote = connection.ops.quote_name
    with row_sql.prepared_cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {quote(Run._meta.db_table)} WHERE {quote('workflow_id')} = %s "
            f"AND {quote('status')} = %s LIMIT 1",
            [workflow_id, str(RunStatus.QUEUED)],
        )
        queued = cursor.fetchone() is not None
    if queued:
        task_queue.send(task_queue.RUN_FINISHED, run_id)


def _schedule_step(
    run: Run,
    command: engine.ScheduleStep,
    kind: str,
    now,
    continuation: Continuation | None = None,
) -> None:
    due_now = command.delay_seconds <= 0
    not_before = None if due_now else now + timedelta(seconds=command.delay_seconds)
    step_run = StepRun(
        run=run,
        step_id=command.step_id,
        attempt=command.attempt,
        kind=kind,
        idempotency_key=idempotency_key(run.idempotency_base or run.pk, command.step_id),
        not_before=not_before,
        enqueued_at=now if due_now else None,
    )
    # A light step the bus consumer keeps for a run created in this transaction is written
    # once, with its result (write_result): no one else can see the run before the commit,
    # and the row would otherwise be inserted queued only to be updated a moment later.
    if not (due_now and continuation and written_once(run) and continuation.would_take(kind)):
        insert_after_held(run, step_run)
    journal(
        run,
        "step.scheduled",
        step=command.step_id,
        attempt=command.attempt,
        step_kind=kind,
        delay_seconds=command.delay_seconds,
        not_before=_iso(not_before),
        idempotency_key=step_run.idempotency_key,
        at=_iso(now),
    )
    if due_now and not (continuation and continuation.take(step_run, kind)):
        enqueue_on_commit(step_run.pk, kind)


def enqueue_on_commit(step_run_id: int, kind: str | None = None) -> None:
    from workflows.runs import step_queues

    # robust: if Redis is down the row stays queued and the scheduler enqueues it again.
    transaction.on_commit(lambda: step_queues.send(step_run_id, kind), robust=True)


def _dead_letter_step(run: Run, happening: engine.StepFinished) -> None:
    DeadLetter.objects.create(
        kind="step",
        reason=happening.error or "step failed",
        run=run,
        step_id=happening.step_id,
        event_id=run.event_id,
        payload={
            "run": run.pk,
            "workflow": run.workflow.slug,
            "version": run.version.number,
            "step": happening.step_id,
            "attempt": happening.attempt,
            "error_code": happening.code,
            "event": run.event_id,
        },
    )


# Whole definitions (the version's, the workflow's draft) joined with a run and never read
# from it: the parsed definition comes from the cache by version id (definition_for).
BULKY = ("version__definition", "workflow__draft")


def lock_run(run_id: int) -> Run:
    # Lock the run row (only that row: `of=self`, not the workflow joined for its slug), so
    # two steps finishing together cannot both start their successor.
    return (
        Run.objects.select_for_update(of=("self",))
        .select_related("version", "workflow", "event")
        .defer(*BULKY)
        .get(pk=run_id)
    )


def lock_attempt(step_run_id: int, *, joined: Run | None = None) -> StepRun | None:
    """An attempt with its run, the run's row locked (only that row, as `lock_run` does),
    in one statement. None when there is no such attempt. `joined`: the same run as read
    by an earlier transaction of this task, whose version, workflow and event (which a run
    never changes) are taken instead of being joined and read again."""
    attempts = StepRun.objects.select_for_update(of=("run",))
    if joined is not None:
        step_run = attempts.select_related("run").filter(pk=step_run_id).first()
        run = step_run.run if step_run is not None else None
        if run is None or (run.pk, run.version_id, run.workflow_id, run.event_id) != (
            joined.pk,
            joined.version_id,
            joined.workflow_id,
            joined.event_id,
        ):
            return step_run if run is None else lock_attempt(step_run_id)
        run.version, run.workflow, run.event = joined.version, joined.workflow, joined.event
        return step_run
    return (
        attempts.select_related("run__version", "run__workflow", "run__event")
        .defer(*(f"run__{field}" for field in BULKY))
        .filter(pk=step_run_id)
        .first()
    )


def advance_run(*, run_id: int, happening: engine.Happening) -> list[engine.Command]:
    with transaction.atomic():
        return advance_locked(lock_run(run_id), happening)


def record_result(
    *,
    step_run_id: int,
    happening: engine.StepFinished,
    output=None,
    input_=None,
    from_status: StepStatus = StepStatus.RUNNING,
    continuation: Continuation | None = None,
    joined: Run | None = None,
) -> bool:
    """Write an attempt's result and advance its run, once. False if fenced out (the
    attempt is no longer `from_status`: a late or repeated result). `joined`: the run as
    the claim read it (see lock_attempt): its version, workflow and event are not read
    again, the costliest statement of a step's second transaction to build."""
    with transaction.atomic():
        step_run = lock_attempt(step_run_id, joined=joined)
        if step_run is None:
            raise StepRun.DoesNotExist(f"no attempt {step_run_id}")
        return write_result(
            run=step_run.run,
            step_run_id=step_run_id,
            happening=happening,
            output=output,
            input_=input_,
            from_status=from_status,
            continuation=continuation,
        )


def write_result(
    *,
    run: Run,
    step_run_id: int,
    happening: engine.StepFinished,
    output=None,
    input_=None,
    from_status: StepStatus = StepStatus.RUNNING,
    started: dict | None = None,
    continuation: Continuation | None = None,
    unsaved: StepRun | None = None,
) -> bool:
    """`record_result` inside the caller's transaction, which holds the run's lock. With
    `started` (the claim's columns), the attempt goes from `from_status` (queued) to its
    result in one conditional UPDATE and its `step.started` entry is journaled first: a
    light step claimed, run and recorded in one transaction, never seen running. `unsaved`:
    the attempt not written yet (see _schedule_step), inserted here with its result."""
    known = known_state(run, continuation, happening)  # before this transaction's entries
    status = StepStatus.SUCCEEDED if happening.succeeded else StepStatus.FAILED
    now = timezone.now()
    changes = {
        "output": output,
        "error": happening.error,
        "error_code": happening.code,
        "retryable": happening.retryable,
        "port": happening.port if happening.succeeded else "",
        "finished_at": now,
        "wake_at": None,
    }
    if input_ is not None:
        changes["input"] = input_
    if started:
        changes.update(started)
    if unsaved is not None:
        step_move(StepStatus(unsaved.status), status)  # the legal move, as move_step checks
        for column, value in changes.items():
            setattr(unsaved, column, value)
        unsaved.status = status
        hold_or_insert(run, unsaved, returning_pk=True)
        written = True
    else:
        written = move_step(step_run_id, source=from_status, target=status, **changes)
    if not written:
        # Fenced: a late result (its worker was frozen past the lease) or a repeated one.
        log.warning(
            "result of attempt %s (run %s) refused: the attempt is no longer %s",
            step_run_id,
            run.pk,
            from_status,
        )
        return False
    with journal_batch(run):
        if started:
            journal(
                run,
                "step.started",
                step=happening.step_id,
                attempt=happening.attempt,
                worker=started.get("worker", ""),
                at=_iso(started.get("started_at")),
            )
        journal(
            run,
            f"step.{status}",
            step=happening.step_id,
            attempt=happening.attempt,
            port=changes["port"],
            output=output,
            input=input_,
            error=happening.error,
            error_code=happening.code,
            retryable=happening.retryable,
            at=_iso(now),
        )
        if not advance_locked(run, happening, continuation=continuation, state=known):
            # Nothing followed (e.g. a parallel branch is still running): still persist the
            # journal position and tell browsers the step moved.
            save_run(run, ["seq"])
            notify.run_changed(
                run_id=run.pk, seq=run.seq, workflow_slug=run.workflow.slug, status=run.status
            )
    return True


def mark_started(*, step_run: StepRun, run: Run | None = None) -> None:
    """Journal that an attempt started (the claim itself is a conditional UPDATE). Pass
    the run when the caller already holds its lock in its transaction."""
    if run is None:
        with transaction.atomic():
            mark_started(step_run=step_run, run=lock_run(step_run.run_id))
        return
    journal(
        run,
        "step.started",
        step=step_run.step_id,
        attempt=step_run.attempt,
        worker=step_run.worker,
        at=_iso(step_run.started_at),
    )
    write_run(run, ["seq"])
    notify.run_changed(
        run_id=run.pk, seq=run.seq, workflow_slug=run.workflow.slug, status=run.status
    )
