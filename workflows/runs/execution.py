"""Execute step attempts in a worker.

Two paths, chosen by the step kind's `light` flag (steps/base.py):

- A side-effecting or waiting kind is claimed first (a conditional UPDATE, committed with
  its `step.started` entry), run outside any transaction with a heartbeat, and its result
  recorded in a second short transaction, which advances the run (or the step is parked).
- A light kind is pure: it acts on nothing outside the run and never waits. It is claimed,
  run, recorded and the run advanced in one transaction holding the run's lock once; the
  claim and the result are one conditional UPDATE from `queued` (0 rows: not ours). Running
  it twice could change nothing outside, and only the transaction that commits counts.

After a step, the first light step it made ready is run by the same task, without a new
Celery message, up to a budget of steps and time per task (so one long chain cannot keep a
worker from every other run); past it, the step is sent as a message as usual.

Only what a step references is loaded: the outputs of the `steps.<id>` it names and the
`secrets.<name>` it names (everything, when a reference cannot be read statically or the
kind hands the whole context to user code).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from workflows.access.secrets import mask, secret_values
from workflows.catalog.definition_parsing import definition_for
from workflows.core import engine, secret_places
from workflows.core.cel_values import unstorable
from workflows.core.definition import Step
from workflows.core.expressions import MAX_RENDERED_BYTES, TEMPLATE, ExpressionError, render_value
from workflows.core.states import RunStatus, StepStatus
from workflows.events.envelope import to_structured
from workflows.infra import step_metrics, tracing
from workflows.runs.advance import (
    Continuation,
    lock_attempt,
    mark_started,
    record_result,
    write_held_steps,
    write_result,
)
from workflows.runs.item_checkpoints import StepItemCheckpoints, inherited_runs
from workflows.runs.models import Run, StepRun
from workflows.runs.side_effects import recorded_result, side_effecting
from workflows.runs.step_heartbeats import heartbeating
from workflows.runs.step_publishing import event_for_step, sink_config, stored_envelope
from workflows.runs.transitions import move_step
from workflows.runs.waits import emit_for_step, park
from workflows.steps import registry
from workflows.steps.base import StepContext, StepError, StepKind, StepResult

log = logging.getLogger("signalbox.runs")
# How long a finished step's worker keeps trying to store its result while the database is
# away, before it gives the attempt up to the lease sweep.
RECORD_PATIENCE_SECONDS = 600


_worker_names: dict[tuple, str] = {}


def worker_name() -> str:
    # Not fixed at import: a Celery pool process is forked from a parent that may have
    # imported this module, and its attempts must name the child's pid. In a worker, the
    # Celery node name (orchestrator/celery.py) stands for the host. Kept per (pid, node).
    key = (os.getpid(), os.environ.get("SIGNALBOX_WORKER_NODE"))
    name = _worker_names.get(key)
    if name is None:
        name = _worker_names[key] = f"{key[1] or socket.gethostname()}:{key[0]}"
    return name


ACTIVE_RUN = (RunStatus.QUEUED, RunStatus.RUNNING)
# One task runs at most this many light steps of a run one after another, for at most this
# long; then the next step goes back to the queue behind the other runs' work.
INLINE_MAX_STEPS = 100
INLINE_MAX_SECONDS = 0.5
# The bus consumer runs the light steps of the runs it starts, up to SIGNALBOX
# ["BUS_INLINE_STEPS"] steps and this long per partition's share of a read (the rest goes
# to the workers): a light run then finishes without a Celery hop, and a long chain cannot
# hold the partition up. Not much less: on a loaded machine a tight clock sends the work
# to the workers, which costs more in all (a hop, more statements), making it worse.
BUS_INLINE_MAX_SECONDS = 0.2


# --- what a step references ------------------------------------------------------------------
ALL = None  # "every one": a reference that cannot be read statically


@dataclass(frozen=True)
class References:
    steps: frozenset[str] | None  # ids of the steps whose output it reads, or ALL
    secrets: frozenset[str] | None  # names of the secrets it reads, or ALL


_ROOT = re.compile(r"(?<![\w.])(steps|secrets)\b")
_NAMED = re.compile(r"""\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\])""")


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def references_in(texts: Iterable[str]) -> References:
    """The `steps.<id>` / `steps["id"]` and `secrets.<name>` that CEL texts read. A root
    used any other way (`steps[x]`, `steps` alone) reads everything. Over-approximates (a
    name in a string literal counts), never under: what is not named is not readable."""
    found: dict[str, set[str] | None] = {"steps": set(), "secrets": set()}
    for text in texts:
        for root in _ROOT.finditer(text):
            names = found[root.group(1)]
            if names is None:
                continue
            named = _NAMED.match(text, root.end())
            name = named and next((g for g in named.groups() if g is not None), None)
            if name is None:
                found[root.group(1)] = None
            else:
                names.add(name)
    return References(
        steps=None if found["steps"] is None else frozenset(found["steps"]),
        secrets=None if found["secrets"] is None else frozenset(found["secrets"]),
    )


def step_references(step: Step, kind: StepKind) -> References:
    """What a step's config can read: bare CEL fields and fields the kind renders itself
    are read whole, every other string only inside its `{{ … }}`. Secrets: only those its
    secret-capable fields name (a use anywhere else is refused before rendering)."""
    secrets = capable_secret_names(step, kind)
    if kind.needs_whole_context(step.config):
        return References(steps=ALL, secrets=secrets)
    whole = {path.split("/")[1] for path, _ in kind.expressions(step.config)}
    whole.update(kind.raw_fields)
    texts: list[str] = []
    for key, value in step.config.items():
        for text in _strings(value):
            if key in whole:
                texts.append(text)
            else:
                texts.extend(match.group(1) for match in TEMPLATE.finditer(text))
    return References(steps=references_in(texts).steps, secrets=secrets)


def capable_secret_names(step: Step, kind: StepKind) -> frozenset[str] | None:
    names: set[str] = set()
    for path, text in secret_places.secret_uses(kind, step.config):
        if not kind.secret_capable(step.config, path):
            continue
        found = secret_places.names_in(text)
        if found is None:  # `secrets[x]` in a secret-capable field: any may be meant
            return ALL
        names |= found
    return frozenset(names)


_REFERENCES: dict[tuple[int, str], tuple[Step, References]] = {}


def references_of(run: Run, step: Step) -> References:
    # Versions are immutable: a step's references are kept by (version, step), checked
    # against the very Step object the definition cache handed out.
    key = (run.version_id, step.id)
    cached = _REFERENCES.get(key)
    if cached is not None and cached[0] is step:
        return cached[1]
    if len(_REFERENCES) > 4096:
        _REFERENCES.clear()
    found = step_references(step, registry.get(step.kind))
    _REFERENCES[key] = (step, found)
    return found


def upstream_outputs(run: Run, wanted: frozenset[str] | None) -> dict[str, dict]:
    """{step_id: {"output", "port"}} of the succeeded steps among `wanted` (ALL: every one)."""
    if wanted is not None and not wanted:
        return {}
    write_held_steps(run)  # the light steps just run, which the bus consumer holds back
    succeeded = StepRun.objects.filter(run_id=run.pk, status=StepStatus.SUCCEEDED)
    if wanted is not None:
        succeeded = succeeded.filter(step_id__in=sorted(wanted))
    return {
        step_id: {"output": output, "port": port}
        for step_id, output, port in succeeded.order_by("attempt", "id").values_list(
            "step_id", "output", "port"
        )
    }


def step_secrets(references: References) -> dict[str, str]:
    if references.secrets is not None and not references.secrets:
        return {}
    return secret_values(names=references.secrets)


# --- the context a step runs in -------------------------------------------------------------
def claim(step_run_id: int, worker: str, *, step_run: StepRun | None = None) -> bool:
    """Take the attempt with a conditional UPDATE: 0 rows means a duplicate delivery, a
    stale attempt or a finished run, and the caller must do nothing. The claim is the
    attempt's first heartbeat (a worker dying before the next one is still noticed).
    `step_run`, when given, is updated to what was written."""
    now = timezone.now()
    claimed = move_step(
        step_run_id,
        source=StepStatus.QUEUED,
        target=StepStatus.RUNNING,
        run_status_in=ACTIVE_RUN,
        started_at=now,
        heartbeat_at=now,
        worker=worker,
    )
    if claimed and step_run is not None:
        step_run.status, step_run.worker = StepStatus.RUNNING, worker
        step_run.started_at = step_run.heartbeat_at = now
    return claimed


def run_data(run: Run) -> dict:
    return {
        "id": run.pk,
        "workflow": run.workflow.slug,
        "version": run.version.number,
        "correlation_id": run.correlation_id,
        "started_at": run.started_at.isoformat() if run.started_at else None,
    }


def trigger_event(run: Run) -> dict:
    """The run's triggering event as steps see it; a replay with edited input sees the
    edited data (the stored event itself never changes)."""
    event = to_structured(run.event) if run.event else {}
    if run.input_override is not None:
        event = {**event, "data": run.input_override}
        event.pop("data_base64", None)
    return event


def build_context(
    run: Run,
    step: Step,
    step_run: StepRun,
    secrets: dict[str, str],
    *,
    upstream: dict[str, dict] | None = None,
) -> StepContext:
    """The context of one attempt. `upstream` defaults to the outputs the step references."""
    if upstream is None:
        upstream = upstream_outputs(run, references_of(run, step).steps)
    return StepContext(
        run_id=run.pk,
        step_id=step.id,
        attempt=step_run.attempt,
        idempotency_key=step_run.idempotency_key,
        event=trigger_event(run),
        steps=upstream,
        outbound_allow=settings.SIGNALBOX_OUTBOUND_ALLOW,
        vars=definition_for(run.version).vars,
        secrets=secrets,
        run=run_data(run),
        emit=lambda config: emit_for_step(run=run, step_run=step_run, config=config),
        stored_event=lambda event_id: stored_envelope(event_id=event_id),
        outgoing_event=lambda config: event_for_step(run=run, step_run=step_run, config=config),
        connection=lambda name: sink_config(name=name),
        checkpoints=StepItemCheckpoints(
            run_id=run.pk,
            step_id=step.id,
            attempt=step_run.attempt,
            secrets=secrets,
            inherited=inherited_runs(run, step.id) if step.kind == "for_each" else (),
        ),
    )


_MISPLACED: dict[int, tuple[Step, list[tuple[str, str]]]] = {}


def misplaced_secrets_of(step: Step, kind: StepKind) -> list[tuple[str, str]]:
    # Kept per Step object (the definition cache hands out one per version and step, and
    # holding it here keeps its id from being reused): scanning costs tens of µs a step.
    cached = _MISPLACED.get(id(step))
    if cached is not None and cached[0] is step:
        return cached[1]
    if len(_MISPLACED) > 4096:
        _MISPLACED.clear()
    found = secret_places.misplaced_secrets(kind, step.config)
    _MISPLACED[id(step)] = (step, found)
    return found


def render_config(step: Step, kind: StepKind, context: StepContext) -> dict:
    """Expression fields are evaluated by the kind; every other `{{ … }}` is rendered now.
    A secret named outside a secret-capable field (a version saved before the rule) fails
    the step before anything is rendered."""
    misplaced = misplaced_secrets_of(step, kind)
    if misplaced:
        path, message = misplaced[0]
        raise StepError(f"step {step.id} /config{path}: {message}", code="secret_misplaced")
    config = dict(step.config)
    expression_keys = {path.split("/")[1] for path, _ in kind.expressions(config)}
    expression_keys.update(kind.raw_fields)
    budget = [MAX_RENDERED_BYTES]  # one for the whole config
    return {
        key: value
        if key in expression_keys
        else render_value(
            value, context.expression_context(), where=f"step {step.id} /{key}", budget=budget
        )
        for key, value in config.items()
    }


def storable(result: Any) -> StepResult:
    """The kind's result as a StepResult whose output the database can store: a non-finite
    number (which jsonb refuses) fails the step now, with its path, rather than failing the
    write and leaving the attempt to the heartbeat sweep a minute later."""
    if not isinstance(result, StepResult):
        result = StepResult(output=result)
    problem = unstorable(result.output, where="output")
    if problem:
        raise StepError(problem, code="output")
    return result


def failure(step: Step, attempt: int, exc: BaseException) -> engine.StepFinished:
    """What a raised exception means for the attempt."""
    if isinstance(exc, ExpressionError):
        return engine.StepFinished(
            step.id, attempt, succeeded=False, error=str(exc), code="expression"
        )
    if isinstance(exc, StepError):
        return engine.StepFinished(
            step.id,
            attempt,
            succeeded=False,
            retryable=exc.retryable,
            error=str(exc),
            retry_after=exc.retry_after,
            code=exc.code,
        )
    # A bug in a step must fail the attempt, not the worker. Its text may hold Python
    # internals (reprs, class names): those go to the worker's log (logged by the caller),
    # the run shows what a user can act on.
    return engine.StepFinished(
        step.id,
        attempt,
        succeeded=False,
        error=f"the {step.kind} step failed unexpectedly (an internal error, in the worker's log)",
        code="crash",
    )


# --- running attempts ---------------------------------------------------------------------------
class Budget:
    """How many light steps one task may still run inline, and until when."""

    def __init__(self, steps: int | None = None, seconds: float | None = None):
        self.steps = self.granted = INLINE_MAX_STEPS if steps is None else steps
        seconds = INLINE_MAX_SECONDS if seconds is None else seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> bool:
        # The first step is always granted: the time bounds how long inline work goes on
        # (a slow start, e.g. a cold definition cache, must not send a lone light run away).
        if self.steps <= 0:
            return False
        return self.steps == self.granted or time.monotonic() < self.deadline

    @classmethod
    def for_bus_read(cls) -> Budget:
        """What the bus consumer may run inline for one partition's share of a read."""
        return cls(settings.SIGNALBOX.get("BUS_INLINE_STEPS", 20), BUS_INLINE_MAX_SECONDS)


def execute_step(*, step_run_id: int, worker: str | None = None) -> bool:
    """Run one attempt, then the light steps it makes ready, within a budget. Returns False
    when the attempt was not ours to run."""
    from workflows.runs import step_queues

    worker = worker or worker_name()
    budget = Budget()
    ran, follow_up, known = _execute_one(step_run_id, worker, budget, None)
    while follow_up is not None:
        budget.steps -= 1
        current, follow_up = follow_up, None
        try:
            _done, follow_up, known = _execute_one(current, worker, budget, known)
        except Exception:
            # It was kept for this task and is queued without a message: send one, so a
            # failure here (the database went away) costs no more than a redelivery.
            transaction.on_commit(lambda c=current: step_queues.send(c), robust=True)
            raise
    return ran


def run_kept_steps(
    *, run: Run, kept: Continuation, worker: str | None = None, budget: Budget
) -> None:
    """Run the light first step `kept` holds, and the light steps it makes ready one after
    another while `budget` lasts, all inside the transaction that created `run` and its
    attempts (nobody else can see them before commit: no lock to take). Each is claimed,
    run and recorded as `execute_step` records a light step, with one conditional UPDATE;
    they commit with the run, or not at all. Past the budget, the next step is sent to the
    workers on commit as usual."""
    worker = worker or worker_name()
    definition = definition_for(run.version)
    while kept is not None and kept.step_run is not None:
        step_run = kept.step_run
        assert step_run.run_id == run.pk
        budget.steps -= 1
        follow = Continuation(known=kept.after) if budget.left() else None
        if follow is not None:
            follow.run = run
        step = definition.steps[step_run.step_id]
        _run_light(run, step, registry.get(step.kind), step_run, worker, follow)
        kept = follow


def _execute_one(
    step_run_id: int, worker: str, budget: Budget, known: tuple | None
) -> tuple[bool, int | None, tuple | None]:
    """(whether the attempt was ours, a light step kept for this task to run next, what
    this transaction left the run's seq and state at, for the next one)."""
    continuation = Continuation(known=known[:2] if known else None) if budget.left() else None
    with transaction.atomic():
        # One statement: the attempt, its run and the run's row lock (taken first, in the
        # order record_result and the run's wind-down take it).
        step_run = lock_attempt(step_run_id, joined=known[2] if known else None)
        if step_run is None or step_run.status != StepStatus.QUEUED:
            return False, None, None
        run = step_run.run
        if run.status not in ACTIVE_RUN:
            return False, None, None
        step = definition_for(run.version).steps[step_run.step_id]
        kind = registry.get(step.kind)
        if continuation is not None:
            continuation.run = run
        if kind.light:
            ran = _run_light(run, step, kind, step_run, worker, continuation)
            return ran, *_follow_up(continuation)
        # The claim and its `step.started` entry commit together (a worker killed between
        # them would leave a running row the journal never heard of).
        if not claim(step_run_id, worker, step_run=step_run):
            return False, None, None
        mark_started(step_run=step_run, run=run)
    if continuation is not None:
        continuation.known = None  # the effect ran outside the lock: the run may have moved
    return _run_claimed(run, step, kind, step_run, continuation), *_follow_up(continuation)


def _follow_up(continuation: Continuation | None) -> tuple[int | None, tuple | None]:
    if continuation is None or continuation.after is None:
        return (continuation.step_run_id if continuation else None), None
    seq, state = continuation.after
    return continuation.step_run_id, (seq, state, continuation.run)


def _run_light(
    run: Run,
    step: Step,
    kind: StepKind,
    step_run: StepRun,
    worker: str,
    continuation: Continuation | None,
) -> bool:
    """Claim, run and record a light step inside the caller's transaction (run locked)."""
    started_at = timezone.now()
    references = references_of(run, step)
    secrets = step_secrets(references)
    context = build_context(
        run, step, step_run, secrets, upstream=upstream_outputs(run, references.steps)
    )
    output = None
    rendered: dict = dict(step.config)
    with tracing.step_attempt(run, step, step_run, trigger=context.event) as attempt:
        try:
            rendered = render_config(step, kind, context)
            result = storable(kind.execute(rendered, context))
            if result.wait is not None:  # a light kind must not wait: its contract says so
                raise StepError(f"step kind {step.kind!r} is light and cannot wait")
            output = result.output
            happening = engine.StepFinished(
                step.id, step_run.attempt, succeeded=True, port=result.port
            )
        except Exception as exc:
            if not isinstance(exc, ExpressionError | StepError):
                log.exception("step %s of run %s raised", step.id, run.pk)
            happening = failure(step, step_run.attempt, exc)
        tracing.finished(attempt, happening)
    step_metrics.observe(
        step.kind, (timezone.now() - started_at).total_seconds(), happening.succeeded
    )
    return write_result(
        run=run,
        step_run_id=step_run.pk,
        happening=mask_happening(happening, secrets),
        output=mask(output, secrets),
        input_=stored_input(step, kind, rendered, run, secrets),
        from_status=StepStatus.QUEUED,
        started={"started_at": started_at, "heartbeat_at": started_at, "worker": worker},
        continuation=continuation,
        unsaved=step_run if step_run.pk is None else None,
    )


def _run_claimed(
    run: Run,
    step: Step,
    kind: StepKind,
    step_run: StepRun,
    continuation: Continuation | None,
) -> bool:
    """Run a claimed attempt outside any transaction, then record its result (or park it)."""
    references = references_of(run, step)
    secrets = step_secrets(references)
    context = build_context(run, step, step_run, secrets)
    output = None
    rendered: dict = dict(step.config)
    began = time.monotonic()
    with tracing.step_attempt(run, step, step_run, trigger=context.event) as attempt:
        try:
            rendered = render_config(step, kind, context)
            if run.origin == "shadow" and side_effecting(step):
                # A shadow run never acts on the world: the original run's recorded result.
                result = recorded_result(run=run, step_id=step.id)
            else:
                # The only part that may take long: the worker says it is alive meanwhile.
                with heartbeating(step_run.pk):
                    result = kind.execute(rendered, context)
            result = storable(result)
            if result.wait is not None:
                park(
                    step_run=step_run,
                    wait=result.wait,
                    output=mask(result.output, secrets),
                    context=context,
                )
                attempt.set(**{"signalbox.step.outcome": "waiting"})
                return True
            output = result.output
            happening = engine.StepFinished(
                step.id, step_run.attempt, succeeded=True, port=result.port
            )
        except Exception as exc:
            if not isinstance(exc, ExpressionError | StepError):
                log.exception("step %s of run %s raised", step.id, run.pk)
            happening = failure(step, step_run.attempt, exc)
        tracing.finished(attempt, happening)
    if run.origin != "shadow":  # answered from recordings: not the system's timings
        step_metrics.observe(step.kind, time.monotonic() - began, happening.succeeded)
    record_until_stored(
        step_run_id=step_run.pk,
        happening=mask_happening(happening, secrets),
        output=mask(output, secrets),
        input_=stored_input(step, kind, rendered, run, secrets),
        continuation=continuation,
        joined=run,
    )
    return True


def record_until_stored(**result) -> bool:
    """record_result, tried again while the database is away. The step has run (its effect
    may have happened): giving up would leave the attempt to the lease sweep, which fails it
    and may run the effect again. The scheduler judges no lease until the database has
    been back a whole heartbeat timeout, so a result stored soon after is not fenced out."""
    deadline = time.monotonic() + RECORD_PATIENCE_SECONDS
    pause = 0.2
    while True:
        try:
            return record_result(**result)
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("attempt %s: result not stored (%s); retrying", result["step_run_id"], exc)
            connection.close()  # broken: the next try connects afresh
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def stored_input(
    step: Step, kind: StepKind, rendered: dict, run: Run, secrets: dict[str, str]
) -> dict:
    """The step input kept with the attempt: secret-capable fields that named a secret stay
    unrendered (`{{ secrets.token }}`), and what is left is masked once more."""
    if not secrets:  # nothing named a secret (or its rendering failed): nothing to undo
        return {"config": rendered, "event_id": run.event_id}
    config = secret_places.unrendered_secret_fields(kind, step.config, rendered)
    return mask({"config": config, "event_id": run.event_id}, secrets)


def mask_happening(happening: engine.StepFinished, secrets: dict[str, str]) -> engine.StepFinished:
    if not happening.error:
        return happening
    return replace(happening, error=mask(happening.error, secrets))
