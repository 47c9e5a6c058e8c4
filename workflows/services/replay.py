"""Replay runs: from the failed step, from any step, from the start, with edited input.

A replay is a new run (origin "replay", `replay_of` the original) pinned to the original's
version or the latest published one. Steps that succeeded in the original and that nothing
re-run feeds are *reused*: their StepRun rows are written already succeeded, with the
original's output and port and `reused_from` pointing at the attempt they copy, and are
journaled as `step.reused`. The engine never schedules a step that is already in the run's
state, so reused steps are not executed again; everything else is decided as usual.

Which steps run again (`plan_replay`): the step the replay starts from, every step that did
not finish cleanly in the original (failed, still waiting, never reached), every step that
changed between the original's version and the replay's, and everything downstream of
those. A step the original skipped stays to the engine, which skips it again when what
feeds it is carried over unchanged.

Idempotency keys derive from `Run.idempotency_base` (the original's base, or its id), so a
re-executed side-effecting step sends the same key as the original attempt and a receiver
that deduplicates sees one effect; `renew_idempotency_keys` gives the replay its own keys.

Also here: shadow runs (a draft answered from the original's recorded side effects), bulk
replays processed at a limited rate by a Celery task, and step-by-step comparison.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import engine, notify, task_queue
from ..definition import Definition, InvalidDefinition, Step
from ..models import (
    DeadLetter,
    ReplayBatch,
    Run,
    RunJournal,
    StepRun,
    Workflow,
    WorkflowVersion,
)
from ..states import TERMINAL_RUN, RunStatus, StepStatus
from ..steps import registry
from ..steps.base import StepError, StepResult
from . import audit
from .definition_parsing import definition_for, parse_definition
from .item_checkpoints import StepItemCheckpoints, inherited_runs
from .run_control import admit
from .runs import advance_locked, idempotency_key, journal

log = logging.getLogger("signalbox.replay")

FROM_FAILED = "failed"
FROM_START = "start"
VERSION_ORIGINAL = "original"
VERSION_LATEST = "latest"
DEFAULT_PER_SECOND = 5.0
MAX_PER_SECOND = 50.0
MAX_BATCH = 1000
MAX_SHADOW = 100
UNCHANGED: Any = object()  # "no edited input": the replay sees what the original saw

# Kinds that start work elsewhere without being marked side-effecting themselves.
EFFECTFUL_CONTROL_KINDS = frozenset({"sub_workflow"})


class ReplayError(Exception):
    """A replay that cannot be done, with the HTTP status the API answers."""

    def __init__(self, message: str, *, status: int = 409, kind: str = "cannot-replay"):
        super().__init__(message)
        self.status = status
        self.kind = kind


def side_effecting(step: Step) -> bool:
    """True when running the step acts on the world (HTTP, email, emit, code, child runs)."""
    kinds = registry.all_kinds()
    kind = kinds.get(step.kind)
    if kind is None:
        return True  # unknown: assume the worst
    if kind.side_effects or step.kind in EFFECTFUL_CONTROL_KINDS:
        return True
    if step.kind == "for_each":
        inner = kinds.get(str((step.config.get("do") or {}).get("kind", "")))
        return inner is None or inner.side_effects or inner.name in EFFECTFUL_CONTROL_KINDS
    return False


# --- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepPlan:
    step_id: str
    kind: str
    action: str  # "reuse" | "run" | "skip"
    why: str
    side_effects: bool
    original_status: str | None
    reused_from: int | None = None  # the StepRun whose output is reused
    original_key: str = ""  # the idempotency key of the original's attempt

    def as_json(self, *, renew: bool) -> dict[str, Any]:
        return {
            "step": self.step_id,
            "kind": self.kind,
            "action": self.action,
            "why": self.why,
            "side_effects": self.side_effects,
            "original_status": self.original_status,
            "reused_from": self.reused_from,
            "idempotency_key": ("renewed" if renew else "reused") if self.action == "run" else None,
            "original_idempotency_key": self.original_key or None,
        }


@dataclass(frozen=True)
class RemovedStep:
    """A step of the original's version that the replay's version no longer has."""

    step_id: str
    kind: str
    original_status: str | None

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step_id, "kind": self.kind, "original_status": self.original_status}


@dataclass(frozen=True)
class ReplayPlan:
    original: Run
    version: WorkflowVersion
    version_choice: str
    from_step: str
    renew_idempotency_keys: bool
    input_override: Any  # what the replay's steps see as the event's data (None: unchanged)
    input_edited: bool
    steps: list[StepPlan]
    warnings: list[str] = field(default_factory=list)
    removed: list[RemovedStep] = field(default_factory=list)

    @property
    def reused(self) -> list[StepPlan]:
        return [s for s in self.steps if s.action == "reuse"]

    @property
    def rerun(self) -> list[StepPlan]:
        return [s for s in self.steps if s.action == "run"]

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.original.pk,
            "workflow": self.original.workflow.slug,
            "original_version": self.original.version.number,
            "version": self.version.number,
            "version_choice": self.version_choice,
            "from_step": self.from_step,
            "renew_idempotency_keys": self.renew_idempotency_keys,
            "input_edited": self.input_edited,
            "steps": [s.as_json(renew=self.renew_idempotency_keys) for s in self.steps],
            "reused": [s.step_id for s in self.reused],
            "rerun": [s.step_id for s in self.rerun],
            "removed": [s.as_json() for s in self.removed],
            "warnings": self.warnings,
        }


def latest_attempts(run: Run) -> dict[str, StepRun]:
    latest: dict[str, StepRun] = {}
    for step_run in run.steps.order_by("attempt", "id"):
        latest[step_run.step_id] = step_run
    return latest


def _topological(definition: Definition) -> list[str]:
    """Step ids, every step after all the steps that feed it (definition order otherwise)."""
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(definition.steps)
    while remaining:
        ready = [s for s in remaining if all(e.source in placed for e in definition.incoming(s))]
        if not ready:  # a cycle cannot be published; keep going rather than loop forever
            ready = remaining[:1]
        for step_id in ready:
            order.append(step_id)
            placed.add(step_id)
            remaining.remove(step_id)
    return order


def _downstream_closure(definition: Definition, roots: Iterable[str]) -> dict[str, str]:
    """Every step reachable from `roots`, mapped to the root that reaches it first."""
    reached: dict[str, str] = {}
    frontier = [(r, r) for r in roots if r in definition.steps]
    while frontier:
        step_id, root = frontier.pop(0)
        if step_id in reached:
            continue
        reached[step_id] = root
        frontier.extend((target, root) for target in definition.downstream(step_id))
    return reached


def _edges_into(definition: Definition, step_id: str) -> set[tuple[str, str]]:
    return {(e.source, e.port) for e in definition.incoming(step_id)}


def resolve_version(run: Run, choice: str) -> WorkflowVersion:
    if choice in ("", VERSION_ORIGINAL):
        return run.version
    if choice == VERSION_LATEST:
        workflow = Workflow.objects.select_related("published_version").get(pk=run.workflow_id)
        if workflow.published_version is None:
            raise ReplayError(f"workflow {workflow.slug} has no published version")
        return workflow.published_version
    raise ReplayError(
        f"version must be {VERSION_ORIGINAL!r} or {VERSION_LATEST!r}, not {choice!r}",
        status=400,
        kind="invalid-body",
    )


def plan_replay(
    *,
    run: Run,
    from_step: str | None = FROM_FAILED,
    version: str = VERSION_ORIGINAL,
    input: Any = UNCHANGED,
    renew_idempotency_keys: bool = False,
) -> ReplayPlan:
    """What a replay of `run` would do. Raises ReplayError when it cannot be done."""
    from_step = from_step or FROM_FAILED
    if run.origin == "shadow":
        raise ReplayError(
            f"run {run.pk} is a shadow run; replay its original, run {run.replay_of_id}, instead"
        )
    if run.status not in TERMINAL_RUN:
        raise ReplayError(
            f"run {run.pk} is still {run.status}; cancel it or wait for it to "
            "finish before replaying it"
        )
    target_version = resolve_version(run, version)
    target = definition_for(target_version)
    original_definition = definition_for(run.version)
    latest = latest_attempts(run)
    label = f"v{target_version.number}" if target_version.number else "the draft"

    roots: dict[str, str] = {}
    if from_step == FROM_FAILED:
        if run.status != RunStatus.FAILED:
            raise ReplayError(
                f"run {run.pk} did not fail (it {run.status}); replay it from a "
                "step or from the start"
            )
    elif from_step == FROM_START:
        roots = dict.fromkeys(target.steps, "the replay starts from the original event")
    elif from_step in target.steps:
        roots[from_step] = "the replay starts here"
    else:
        raise ReplayError(
            f"no step {from_step!r} in {label} of {run.workflow.slug}; steps: "
            + ", ".join(target.steps),
            status=400,
            kind="invalid-body",
        )
    dropped = [s for s in original_definition.steps if s not in target.steps]
    for step_id, step in target.steps.items():
        before = latest.get(step_id)
        if step_id in roots:
            continue
        if step_id not in original_definition.steps:
            roots[step_id] = f"new in {label}"
        elif replace(step, after=()) != replace(original_definition.steps[step_id], after=()):
            roots[step_id] = f"changed in {label}"
        elif _edges_into(target, step_id) != _edges_into(original_definition, step_id):
            gone = sorted({e.source for e in original_definition.incoming(step_id)} & set(dropped))
            roots[step_id] = (
                f"its inputs changed in {label}: {', '.join(gone)} "
                f"{'is' if len(gone) == 1 else 'are'} no longer there"
                if gone
                else f"its inputs changed in {label}"
            )
        elif before is None:
            roots[step_id] = "not reached in the original"
        elif before.status == StepStatus.FAILED:
            roots[step_id] = "failed in the original"
        elif before.status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            roots[step_id] = f"{before.status} when the original ended"

    order = _topological(target)
    while True:
        rerun = _downstream_closure(target, roots)
        carried: dict[str, StepRun] = {}
        more: dict[str, str] = {}
        for step_id in order:
            before = latest.get(step_id)
            if step_id in rerun or before is None:
                continue
            if before.status == StepStatus.SUCCEEDED:
                carried[step_id] = before
                continue
            # Skipped in the original: the engine skips it again only when it was a dead
            # path (no live edge from what is carried over); a step skipped because the run
            # ended first will run.
            incoming = target.incoming(step_id)
            dead = incoming and all(
                e.source in carried
                and (
                    carried[e.source].status != StepStatus.SUCCEEDED
                    or carried[e.source].port != e.port
                )
                for e in incoming
            )
            if dead:
                carried[step_id] = before
            else:
                more[step_id] = "skipped in the original because the run ended first"
        if not more:
            break
        roots.update(more)

    steps: list[StepPlan] = []
    for step_id in order:
        step = target.steps[step_id]
        before = latest.get(step_id)
        common = {
            "step_id": step_id,
            "kind": step.kind,
            "side_effects": side_effecting(step),
            "original_status": before.status if before else None,
            "original_key": before.idempotency_key if before else "",
        }
        if step_id in rerun:
            root = rerun[step_id]
            why = roots.get(step_id, f"downstream of {root}")
            steps.append(StepPlan(action="run", why=why, **common))
        elif before is not None and before.status == StepStatus.SUCCEEDED:
            steps.append(
                StepPlan(
                    action="reuse", why="succeeded in the original", reused_from=before.pk, **common
                )
            )
        else:
            steps.append(
                StepPlan(
                    action="skip",
                    why="skipped in the original (a path not taken); the engine decides again",
                    **common,
                )
            )

    edited = input is not UNCHANGED and input is not None
    override = input if edited else run.input_override
    plan_from = from_step
    removed = [
        RemovedStep(
            step_id=step_id,
            kind=original_definition.steps[step_id].kind,
            original_status=latest[step_id].status if step_id in latest else None,
        )
        for step_id in dropped
    ]
    if from_step == FROM_FAILED:
        # The failed step may be gone from the target version (the usual fix removes or
        # renames it): the run is then mapped onto the new version, which the plan shows.
        failed = [s for s, r in latest.items() if r.status == StepStatus.FAILED]
        if not failed:
            raise ReplayError(
                f"run {run.pk} has no failed step; replay it from a step or from the start"
            )
    plan = ReplayPlan(
        original=run,
        version=target_version,
        version_choice=version or VERSION_ORIGINAL,
        from_step=plan_from,
        renew_idempotency_keys=renew_idempotency_keys,
        input_override=override,
        input_edited=edited,
        steps=steps,
        removed=removed,
    )
    plan.warnings.extend(_warnings(plan))
    return plan


def version_choices(run: Run) -> list[dict[str, Any]]:
    """The versions a replay of `run` may run, offered side by side: the latest published
    one first when it is newer than the original's (a replay right after a fix wants it)."""
    original = {"value": VERSION_ORIGINAL, "number": run.version.number, "label": "original"}
    published = run.workflow.published_version
    if published is None or published.pk == run.version_id:
        return [original]
    latest = {"value": VERSION_LATEST, "number": published.number, "label": "latest published"}
    newer = (published.number or 0) > (run.version.number or 0)
    return [latest, original] if newer else [original, latest]


def default_version(run: Run) -> str:
    return version_choices(run)[0]["value"]


def replays_that_can_start(run: Run) -> list[dict[str, Any]]:
    """The (start, version) pairs a replay of `run` can be made with, for a page that has
    to say what can be done instead of what was asked."""
    found = []
    starts = [FROM_FAILED, FROM_START] if run.status == RunStatus.FAILED else [FROM_START]
    for choice in version_choices(run):
        for start in starts:
            try:
                plan_replay(run=run, from_step=start, version=choice["value"])
            except ReplayError as exc:
                if exc.status == 404:
                    raise
                continue
            found.append({"from_step": start, "version": choice["value"], **_named(choice)})
    return found


def _named(choice: dict[str, Any]) -> dict[str, Any]:
    return {"number": choice["number"], "version_label": choice["label"]}


def _warnings(plan: ReplayPlan) -> list[str]:
    found = []
    if plan.version.pk != plan.original.version_id:
        found.append(
            f"the replay runs v{plan.version.number} of {plan.original.workflow.slug}; "
            f"the original ran v{plan.original.version.number}"
        )
    for gone in plan.removed:
        if gone.original_status == StepStatus.FAILED:
            found.append(
                f"step {gone.step_id}, which failed in the original, is not in "
                f"v{plan.version.number}: the run is mapped onto v{plan.version.number}, "
                "reusing what succeeded unchanged and running everything after the first "
                "changed or missing step"
            )
    for step in plan.rerun:
        if not step.side_effects:
            continue
        if plan.renew_idempotency_keys:
            found.append(
                f"step {step.step_id} ({step.kind}) has side effects and runs again "
                "with a NEW idempotency key: receivers will treat it as a new request"
            )
        else:
            found.append(
                f"step {step.step_id} ({step.kind}) has side effects and runs again "
                "with the SAME idempotency key as the original, so a receiver that "
                "deduplicates sees a repeat"
            )
    found.extend(_kept_items(plan))
    if plan.input_edited and plan.reused:
        found.append(
            "the input is edited, but reused steps keep the outputs they computed "
            "from the original input ("
            + ", ".join(s.step_id for s in plan.reused)
            + "); replay from the start to compute them again"
        )
    return found


def _kept_items(plan: ReplayPlan) -> list[str]:
    """A for_each that runs again with the original's keys and input calls only the items the
    original never finished (services/item_checkpoints.py): say how many it keeps."""
    if plan.renew_idempotency_keys or plan.input_override is not None:
        return []
    before, after = definition_for(plan.original.version), definition_for(plan.version)
    notes = []
    for step in plan.rerun:
        if step.kind != "for_each" or before.steps.get(step.step_id) != after.steps[step.step_id]:
            continue
        kept = StepItemCheckpoints(
            run_id=plan.original.pk,
            step_id=step.step_id,
            attempt=0,
            secrets={},
            inherited=inherited_runs(plan.original, step.step_id),
        ).done()
        if kept:
            notes.append(
                f"step {step.step_id} (for_each) keeps the {len(kept)} item(s) the original "
                "finished; only the others are called again"
            )
    return notes


# --- doing it ----------------------------------------------------------------------------------
def _iso(value) -> str | None:
    return value.isoformat() if value else None


def original_input(run: Run) -> Any:
    """The event data the run's steps saw (its edited input, if it had one)."""
    if run.input_override is not None:
        return run.input_override
    return run.event.data if run.event_id else None


def replay_run(
    *,
    run_id: int,
    actor: str,
    from_step: str | None = FROM_FAILED,
    version: str = VERSION_ORIGINAL,
    input: Any = UNCHANGED,
    renew_idempotency_keys: bool = False,
    reason: str = "",
    batch_id: int | None = None,
) -> Run:
    """Start a replay of run `run_id` and return the new run (queued or running).

    The replay run, its reused steps, the resolution of the original's open step dead
    letters and the audit entry commit together. `batch_id` names the bulk replay that
    made it (kept in its journal, so the batch recognises the runs it already replayed)."""
    with transaction.atomic():
        original = (
            Run.objects.select_related("workflow", "version", "event").filter(pk=run_id).first()
        )
        if original is None:
            raise ReplayError(f"no run {run_id}", status=404, kind="not-found")
        plan = plan_replay(
            run=original,
            from_step=from_step,
            version=version,
            input=input,
            renew_idempotency_keys=renew_idempotency_keys,
        )
        base = None if renew_idempotency_keys else (original.idempotency_base or original.pk)
        run = Run.objects.create(
            workflow=original.workflow,
            version=plan.version,
            event=original.event,
            origin="replay",
            replay_of=original,
            replay_from_step=plan.from_step,
            input_override=plan.input_override,
            idempotency_base=base,
            correlation_id=original.correlation_id,
            partition_key=original.partition_key,
        )
        now = timezone.now()
        journal(
            run,
            "run.replay_of",
            of=original.pk,
            from_step=plan.from_step,
            version=plan.version.number,
            renew_idempotency_keys=renew_idempotency_keys,
            input_edited=plan.input_edited,
            by=actor,
            at=_iso(now),
            **({"batch": batch_id} if batch_id else {}),
        )
        sources = {
            s.pk: s for s in StepRun.objects.filter(pk__in=[p.reused_from for p in plan.reused])
        }
        for step in plan.reused:
            source = sources[step.reused_from]
            key = idempotency_key(run.idempotency_base or run.pk, step.step_id)
            StepRun.objects.create(
                run=run,
                step_id=step.step_id,
                attempt=1,
                kind=step.kind,
                status=StepStatus.SUCCEEDED,
                input=source.input,
                output=source.output,
                port=source.port,
                idempotency_key=key,
                reused_from=source,
                finished_at=now,
            )
            journal(
                run,
                "step.reused",
                step=step.step_id,
                attempt=1,
                step_kind=step.kind,
                port=source.port,
                output=source.output,
                input=source.input,
                idempotency_key=key,
                reused_from=source.pk,
                from_run=source.run_id,
                at=_iso(now),
            )
        run.save(update_fields=["seq"])
        if not admit(run):  # queued behind the workflow's limits: still show it
            notify.run_changed(
                run_id=run.pk, seq=run.seq, workflow_slug=run.workflow.slug, status=run.status
            )
        DeadLetter.objects.filter(kind="step", run=original, resolved_at__isnull=True).update(
            resolved_at=now, resolved_by=actor, resolution=f"replayed as run {run.pk}"
        )
        details: dict[str, Any] = {
            "replay": run.pk,
            "from_step": plan.from_step,
            "version": plan.version.number,
            "version_choice": plan.version_choice,
            "renew_idempotency_keys": renew_idempotency_keys,
            "reused": [s.step_id for s in plan.reused],
            "rerun": [s.step_id for s in plan.rerun],
        }
        if batch_id:
            details["batch"] = batch_id
        if plan.input_edited:
            details["input"] = {"before": original_input(original), "after": plan.input_override}
        audit.record(
            actor=actor,
            action="run.replay",
            target_type="run",
            target_id=original.pk,
            reason=reason,
            details=details,
        )
    return run


# --- shadow runs -------------------------------------------------------------------------------
def recorded_result(*, run: Run, step_id: str) -> StepResult:
    """A shadow run's answer for a side-effecting step: what the same step did in the
    original run. Never executes anything; fails the step clearly when nothing is recorded."""
    original_id = run.replay_of_id
    recorded = (
        StepRun.objects.filter(run_id=original_id, step_id=step_id)
        .exclude(
            status__in=[
                StepStatus.QUEUED,
                StepStatus.RUNNING,
                StepStatus.WAITING,
                StepStatus.SKIPPED,
            ]
        )
        .order_by("-attempt", "-id")
        .first()
        if original_id
        else None
    )
    if recorded is None:
        raise StepError(
            f"shadow run: step {step_id!r} has side effects and the original run "
            f"{original_id} recorded no result for it, so it is not executed",
            code="shadow.unrecorded",
        )
    if recorded.status == StepStatus.FAILED:
        raise StepError(
            f"shadow run: the original run {original_id} recorded a failure: {recorded.error}",
            code=recorded.error_code or "shadow.failed",
        )
    return StepResult(output=recorded.output, port=recorded.port or "success")


def snapshot_draft(*, workflow: Workflow, actor: str, note: str = "") -> WorkflowVersion:
    try:
        parse_definition(workflow.draft)
    except InvalidDefinition as exc:
        raise ReplayError(
            f"the draft of {workflow.slug} is not valid: {exc}",
            status=400,
            kind="invalid-definition",
        ) from exc
    return WorkflowVersion.objects.create(
        workflow=workflow,
        number=None,
        kind="snapshot",
        definition=workflow.draft,
        note=note or "draft snapshot for a shadow replay",
        published_by=actor,
    )


def start_shadow_run(
    *, original: Run, version: WorkflowVersion, batch_id: int | None = None
) -> Run:
    """Run the original's event through `version`; side effects answered from recordings."""
    with transaction.atomic():
        run = Run.objects.create(
            workflow=original.workflow,
            version=version,
            event=original.event,
            origin="shadow",
            replay_of=original,
            input_override=original.input_override,
            idempotency_base=original.idempotency_base or original.pk,
            correlation_id=original.correlation_id,
            partition_key=original.partition_key,
        )
        journal(
            run,
            "run.shadow_of",
            of=original.pk,
            snapshot=version.pk,
            at=_iso(timezone.now()),
            **({"batch": batch_id} if batch_id else {}),
        )
        run.save(update_fields=["seq"])
        # Not through admit(): a shadow run takes no slot from the workflow's real runs.
        advance_locked(run, engine.RunStarted())
    return run


# --- bulk: replays and shadows processed by a Celery task at a limited rate ------------------
def push_batch(batch: ReplayBatch) -> None:
    notify.replay_batch_changed(
        batch_id=batch.pk, done=batch.done, failed=batch.failed, status=batch.status
    )


def _enqueue_batch(batch_id: int) -> None:
    task_queue.send_on_commit(task_queue.PROCESS_REPLAY_BATCH, batch_id)


def start_bulk_replay(
    *,
    actor: str,
    run_ids: list[int],
    selection: dict[str, Any],
    from_step: str = FROM_FAILED,
    version: str = VERSION_ORIGINAL,
    renew_idempotency_keys: bool = False,
    per_second: float = DEFAULT_PER_SECOND,
    reason: str = "",
) -> ReplayBatch:
    """Record a bulk replay of `run_ids` and hand it to the batch task."""
    if not run_ids:
        raise ReplayError("no failed run matches the selection", kind="nothing-selected")
    if len(run_ids) > MAX_BATCH:
        raise ReplayError(
            f"{len(run_ids)} runs selected; a batch takes at most {MAX_BATCH}",
            status=400,
            kind="too-many",
        )
    if version not in (VERSION_ORIGINAL, VERSION_LATEST):
        raise ReplayError(
            f"version must be {VERSION_ORIGINAL!r} or {VERSION_LATEST!r}",
            status=400,
            kind="invalid-body",
        )
    per_second = min(max(float(per_second), 0.1), MAX_PER_SECOND)
    with transaction.atomic():
        batch = ReplayBatch.objects.create(
            kind="replay",
            selection={**selection, "run_ids": list(run_ids)},
            options={
                "from_step": from_step or FROM_FAILED,
                "version": version,
                "renew_idempotency_keys": renew_idempotency_keys,
                "per_second": per_second,
                "reason": reason,
            },
            total=len(run_ids),
            created_by=actor,
            summary={"items": []},
        )
        audit.record(
            actor=actor,
            action="replay.bulk",
            target_type="batch",
            target_id=batch.pk,
            reason=reason,
            details={"selection": selection, "total": len(run_ids), "options": batch.options},
        )
        _enqueue_batch(batch.pk)
    return batch


@dataclass(frozen=True)
class BulkCheck:
    """Whether one run of a bulk selection would start, and why not."""

    run: Run
    can: bool
    why: str  # what the replay does, or why it cannot start

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.run.pk,
            "workflow": self.run.workflow.slug,
            "version": self.run.version.number,
            "error": self.run.error,
            "will_start": self.can,
            "why": self.why,
        }


def check_bulk_replay(
    *, runs: Iterable[Run], from_step: str = FROM_FAILED, version: str = VERSION_ORIGINAL
) -> list[BulkCheck]:
    """A dry run of a bulk replay: for each run, whether its replay would start (planned as
    the batch task will plan it) and, if not, why. Starts nothing."""
    checks = []
    for run in runs:
        try:
            plan = plan_replay(run=run, from_step=from_step, version=version)
        except ReplayError as exc:
            checks.append(BulkCheck(run, False, str(exc)))
            continue
        why = (
            f"v{plan.version.number}: {len(plan.reused)} step(s) reused, "
            f"{len(plan.rerun)} run again"
        )
        if plan.removed:
            why += "; not in this version: " + ", ".join(r.step_id for r in plan.removed)
        checks.append(BulkCheck(run, True, why))
    return checks


def start_shadow(
    *,
    workflow_slug: str,
    last: int,
    actor: str,
    reason: str = "",
    per_second: float = DEFAULT_PER_SECOND,
) -> ReplayBatch:
    """Run the events of the workflow's last `last` triggered runs through its draft."""
    workflow = Workflow.objects.filter(slug=workflow_slug).first()
    if workflow is None:
        raise ReplayError(f"no workflow {workflow_slug}", status=404, kind="not-found")
    if not 1 <= last <= MAX_SHADOW:
        raise ReplayError(f"last must be from 1 to {MAX_SHADOW}", status=400, kind="invalid-body")
    originals = list(
        Run.objects.filter(
            workflow=workflow, origin="trigger", event__isnull=False, status__in=TERMINAL_RUN
        )
        .order_by("-id")
        .values_list("pk", flat=True)[:last]
    )
    if not originals:
        raise ReplayError(
            f"{workflow_slug} has no finished triggered run to shadow", kind="nothing-selected"
        )
    with transaction.atomic():
        snapshot = snapshot_draft(workflow=workflow, actor=actor)
        batch = ReplayBatch.objects.create(
            kind="shadow",
            selection={
                "workflow": workflow_slug,
                "last": last,
                "run_ids": list(reversed(originals)),
            },
            options={
                "snapshot": snapshot.pk,
                "per_second": min(max(per_second, 0.1), MAX_PER_SECOND),
            },
            total=len(originals),
            created_by=actor,
            summary={"items": []},
        )
        audit.record(
            actor=actor,
            action="shadow.start",
            target_type="workflow",
            target_id=workflow_slug,
            reason=reason,
            details={
                "batch": batch.pk,
                "snapshot": snapshot.pk,
                "runs": batch.selection["run_ids"],
            },
        )
        _enqueue_batch(batch.pk)
    return batch


def _process_item(batch: ReplayBatch, run_id: int) -> int:
    options = batch.options
    if batch.kind == "shadow":
        original = Run.objects.select_related("workflow").get(pk=run_id)
        version = WorkflowVersion.objects.get(pk=options["snapshot"])
        return start_shadow_run(original=original, version=version, batch_id=batch.pk).pk
    return replay_run(
        run_id=run_id,
        actor=batch.created_by,
        from_step=options.get("from_step", FROM_FAILED),
        version=options.get("version", VERSION_ORIGINAL),
        renew_idempotency_keys=bool(options.get("renew_idempotency_keys")),
        reason=options.get("reason") or f"bulk replay {batch.pk}",
        batch_id=batch.pk,
    ).pk


def run_made_by_batch(batch: ReplayBatch, run_id: int) -> int | None:
    """The replay (or shadow run) of `run_id` this batch already started, if any: its
    journal's first entry names the batch."""
    kind = "run.shadow_of" if batch.kind == "shadow" else "run.replay_of"
    return (
        RunJournal.objects.filter(run__replay_of_id=run_id, kind=kind, data__batch=batch.pk)
        .order_by("run_id")
        .values_list("run_id", flat=True)
        .first()
    )


def process_batch(
    *,
    batch_id: int,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayBatch:
    """Work through a batch, one item per transaction, at most `per_second` items a second.

    Safe to run again (a redelivered task, or one the scheduler re-enqueued for a batch
    whose worker died): each item commits with the batch's progress and heartbeat, so a
    second run continues after the last committed item, and an item whose run the batch
    already started is recorded, not replayed again. The latest delivery to start drives
    the batch; an earlier one still alive stops at its next item."""
    driver = uuid.uuid4().hex
    with transaction.atomic():
        # Lock the batch: two deliveries of the task must not both start it.
        batch = ReplayBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status in ("done", "cancelled"):
            return batch
        batch.status = "running"
        batch.heartbeat_at = timezone.now()
        batch.summary = {**batch.summary, "driver": driver}
        batch.save(update_fields=["status", "heartbeat_at", "summary"])
        push_batch(batch)
    interval = 1.0 / float(batch.options.get("per_second") or DEFAULT_PER_SECOND)
    started = clock()
    processed = 0
    while True:
        with transaction.atomic():
            # Lock the batch while one item is processed and counted.
            batch = ReplayBatch.objects.select_for_update().get(pk=batch_id)
            if batch.status != "running" or batch.summary.get("driver") != driver:
                return batch
            index = batch.done + batch.failed
            run_ids = batch.selection.get("run_ids", [])
            if index >= len(run_ids):
                _finish(batch)
                return batch
            run_id = run_ids[index]
            items = list(batch.summary.get("items", []))
            try:
                with transaction.atomic():
                    new_id = run_made_by_batch(batch, run_id) or _process_item(batch, run_id)
            except ReplayError as exc:
                items.append({"run": run_id, "error": str(exc)})
                batch.failed += 1
            except Exception as exc:
                log.exception("batch %s: run %s", batch.pk, run_id)
                items.append({"run": run_id, "error": f"{type(exc).__name__}: {exc}"})
                batch.failed += 1
            else:
                items.append({"run": run_id, "replay": new_id})
                batch.done += 1
            batch.summary = {**batch.summary, "items": items}
            batch.heartbeat_at = timezone.now()
            batch.save(update_fields=["done", "failed", "summary", "heartbeat_at"])
            push_batch(batch)
        processed += 1
        # The rate limit: item n starts no earlier than n intervals after the first.
        wait = started + processed * interval - clock()
        if wait > 0 and batch.done + batch.failed < len(run_ids):
            sleep(wait)


def stale_after() -> timedelta:
    return timedelta(seconds=float(settings.SIGNALBOX.get("REPLAY_BATCH_STALE_SECONDS", 120)))


def resume_stranded_batches(*, now: datetime | None = None) -> list[int]:
    """Re-enqueue pending or running batches nobody is driving: their heartbeat (or, never
    started, their creation) is older than REPLAY_BATCH_STALE_SECONDS, as when the worker
    processing one died or its task was lost. Returns the ids resumed.

    Each is claimed with a conditional UPDATE of the heartbeat it was seen with, so two
    schedulers never both resume one; the task it gets continues after the last item the
    lost worker committed."""
    now = now or timezone.now()
    cutoff = now - stale_after()
    stranded = list(
        ReplayBatch.objects.filter(status__in=("pending", "running"))
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff))
        .order_by("id")
        .values_list("pk", "heartbeat_at")[:100]
    )
    resumed = []
    for batch_id, seen in stranded:
        claim = ReplayBatch.objects.filter(pk=batch_id, status__in=("pending", "running"))
        claim = claim.filter(heartbeat_at=seen) if seen else claim.filter(heartbeat_at__isnull=True)
        with transaction.atomic():
            if claim.update(heartbeat_at=now) != 1:
                continue  # another scheduler resumed it, or it moved on
            _enqueue_batch(batch_id)
        log.warning("batch %s: no heartbeat since %s; resumed", batch_id, seen or "it was made")
        resumed.append(batch_id)
    return resumed


def _finish(batch: ReplayBatch) -> None:
    batch.status = "done"
    batch.finished_at = timezone.now()
    errors = [i for i in batch.summary.get("items", []) if i.get("error")]
    batch.summary = {
        **batch.summary,
        "started": batch.done,
        "not_started": batch.failed,
        "errors": errors[:50],
    }
    batch.save(update_fields=["status", "finished_at", "summary"])
    push_batch(batch)


def cancel_batch(*, batch_id: int, actor: str, reason: str = "") -> bool:
    with transaction.atomic():
        batch = ReplayBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status in ("done", "cancelled"):
            return False
        batch.status = "cancelled"
        batch.finished_at = timezone.now()
        batch.save(update_fields=["status", "finished_at"])
        audit.record(
            actor=actor,
            action="replay.bulk_cancel",
            target_type="batch",
            target_id=batch.pk,
            reason=reason,
            details={"done": batch.done, "failed": batch.failed},
        )
        push_batch(batch)
    return True


# --- comparing a replay (or shadow) with its original ------------------------------------------
MAX_CHANGES = 50


@dataclass(frozen=True)
class Change:
    path: str
    before: Any
    after: Any
    kind: str  # "changed" | "added" | "removed"

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path or "/",
            "before": self.before,
            "after": self.after,
            "kind": self.kind,
        }


def json_diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """Where two JSON values differ, as JSON-pointer paths (at most MAX_CHANGES)."""
    changes: list[Change] = []

    def walk(a: Any, b: Any, at: str) -> None:
        if len(changes) >= MAX_CHANGES:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(a) + [k for k in b if k not in a]:
                pointer = f"{at}/{str(key).replace('~', '~0').replace('/', '~1')}"
                if key not in b:
                    changes.append(Change(pointer, a[key], None, "removed"))
                elif key not in a:
                    changes.append(Change(pointer, None, b[key], "added"))
                else:
                    walk(a[key], b[key], pointer)
        elif isinstance(a, list) and isinstance(b, list):
            for index in range(max(len(a), len(b))):
                pointer = f"{at}/{index}"
                if index >= len(b):
                    changes.append(Change(pointer, a[index], None, "removed"))
                elif index >= len(a):
                    changes.append(Change(pointer, None, b[index], "added"))
                else:
                    walk(a[index], b[index], pointer)
        elif a != b or type(a) is not type(b):
            changes.append(Change(at, a, b, "changed"))

    walk(before, after, path)
    return changes[:MAX_CHANGES]


@dataclass(frozen=True)
class StepComparison:
    step_id: str
    original: StepRun | None
    replay: StepRun | None
    reused: bool
    changes: list[Change]

    @property
    def status_changed(self) -> bool:
        return (self.original.status if self.original else None) != (
            self.replay.status if self.replay else None
        )

    @property
    def same(self) -> bool:
        return not self.status_changed and not self.changes

    @property
    def verdict(self) -> str:
        if self.reused:
            return "reused"
        if self.replay is None:
            return "not run"
        if self.original is None:
            return "new"
        if self.status_changed:
            return "status differs"
        return "output differs" if self.changes else "same"

    def as_json(self) -> dict[str, Any]:
        def side(step_run: StepRun | None) -> dict[str, Any] | None:
            if step_run is None:
                return None
            return {
                "status": step_run.status,
                "attempt": step_run.attempt,
                "output": step_run.output,
                "error": step_run.error,
                "port": step_run.port,
                "idempotency_key": step_run.idempotency_key,
            }

        return {
            "step": self.step_id,
            "verdict": self.verdict,
            "reused": self.reused,
            "status_changed": self.status_changed,
            "original": side(self.original),
            "replay": side(self.replay),
            "changes": [c.as_json() for c in self.changes],
        }


def compare_runs(replay: Run, original: Run | None = None) -> list[StepComparison]:
    """The replay's steps beside the original's, in the replay's definition order."""
    original = original or replay.replay_of
    if original is None:
        return []
    mine, theirs = latest_attempts(replay), latest_attempts(original)
    order = list(definition_for(replay.version).steps)
    order += [s for s in theirs if s not in order]
    found = []
    for step_id in order:
        new, old = mine.get(step_id), theirs.get(step_id)
        if new is None and old is None:
            continue
        changes = []
        if new is not None and old is not None and new.reused_from_id is None:
            changes = json_diff(old.output, new.output)
        found.append(StepComparison(step_id, old, new, bool(new and new.reused_from_id), changes))
    return found


@dataclass
class StepSummary:
    step_id: str
    compared: int = 0
    same: int = 0
    differ: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


def shadow_summary(batch: ReplayBatch) -> list[StepSummary]:
    """Per step: in how many shadow runs did the output (or status) differ from the original."""
    items = [i for i in batch.summary.get("items", []) if i.get("replay")]
    runs = {
        r.pk: r
        for r in Run.objects.filter(pk__in=[i["replay"] for i in items]).select_related(
            "version", "replay_of"
        )
    }
    summary: dict[str, StepSummary] = {}
    for item in items:
        shadow = runs.get(item["replay"])
        if shadow is None or shadow.status not in TERMINAL_RUN:
            continue
        for comparison in compare_runs(shadow):
            entry = summary.setdefault(comparison.step_id, StepSummary(comparison.step_id))
            entry.compared += 1
            if comparison.same:
                entry.same += 1
            else:
                entry.differ += 1
                if len(entry.examples) < 3:
                    entry.examples.append(
                        {
                            "original": shadow.replay_of_id,
                            "shadow": shadow.pk,
                            "comparison": comparison.as_json(),
                        }
                    )
    return list(summary.values())
