"""Bulk replays and shadow batches: started at once, worked through by a Celery task
(`process_batch`) at a limited rate, resumed when a worker dies, cancelled on request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from workflows.access import audit
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core.states import TERMINAL_RUN
from workflows.live import notify
from workflows.recovery.models import ReplayBatch
from workflows.recovery.replay_plans import (
    DEFAULT_PER_SECOND,
    FROM_FAILED,
    MAX_BATCH,
    MAX_PER_SECOND,
    MAX_SHADOW,
    VERSION_LATEST,
    VERSION_ORIGINAL,
    ReplayError,
    ReplayPlan,
    latest_attempts,
    plan_replay,
)
from workflows.recovery.replay_runs import replay_run, snapshot_draft, start_shadow_run
from workflows.runs import task_queue
from workflows.runs.models import Run, RunJournal, StepRun

log = logging.getLogger("signalbox.replay")


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
    """Whether one run of a bulk selection would start, and why not. Plain values, not the
    Run: a dry run of a thousand runs read them with narrow queries (check_bulk_replay)."""

    run_id: int
    workflow: str
    version: int | None
    error: str
    can: bool
    why: str  # what the replay does, or why it cannot start

    @property
    def reason(self) -> str:
        """`why` without the run's own id, so that runs refused alike group together."""
        return self.why.replace(f"run {self.run_id} ", "this run ")

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.run_id,
            "workflow": self.workflow,
            "version": self.version,
            "error": self.error,
            "will_start": self.can,
            "why": self.why,
        }


RUN_FIELDS = (
    "pk",
    "origin",
    "status",
    "workflow_id",
    "version_id",
    "replay_of_id",
    "error",
    "workflow__slug",
    "version__number",
)


def check_bulk_replay(
    *, run_ids: Iterable[int], from_step: str = FROM_FAILED, version: str = VERSION_ORIGINAL
) -> list[BulkCheck]:
    """A dry run of a bulk replay: for each run (in the order given), whether its replay
    would start (planned as the batch task will plan it) and, if not, why. Starts nothing.

    Runs of one version that ended alike (the same steps' latest attempts, with the same
    status and port) plan alike, so one of them is planned with its full rows and the
    others share the verdict; the rest is read with two narrow queries (the runs' few
    fields, their attempts' statuses). Model instances with prefetched steps for a thousand
    runs, and a thousand rendered rows, were most of a dry run's time. A refusal names its
    run, so the runs of a refused group are each planned (from the values already read)."""
    ids = list(dict.fromkeys(run_ids))
    rows = {row[0]: dict(zip(RUN_FIELDS, row, strict=True)) for row in _values(ids)}
    attempts: dict[int, dict[str, tuple[int, int, str, str]]] = {}
    for run_id, step_id, attempt, pk, status, port in (
        StepRun.objects.filter(run_id__in=ids)
        .order_by()
        .values_list("run_id", "step_id", "attempt", "pk", "status", "port")
    ):
        seen = attempts.setdefault(run_id, {})
        if step_id not in seen or (attempt, pk) > seen[step_id][:2]:
            seen[step_id] = (attempt, pk, status, port)
    groups: dict[tuple, list[int]] = {}
    for run_id in ids:
        row = rows.get(run_id)
        if row is None:  # gone since it was selected
            continue
        latest = attempts.get(run_id, {})
        alike = (
            row["origin"],
            row["status"],
            row["workflow_id"],
            row["version_id"],
            tuple(sorted((step, a[2], a[3]) for step, a in latest.items())),
        )
        groups.setdefault(alike, []).append(run_id)
    # One run of each group, in full (with its workflow's latest version and its steps).
    firsts = Run.objects.select_related("workflow__published_version", "version").defer(
        "version__definition", "workflow__published_version__definition"
    )
    firsts = firsts.prefetch_related("steps").in_bulk([members[0] for members in groups.values()])
    why: dict[int, tuple[bool, str]] = {}
    for members in groups.values():
        first = firsts.get(members[0])
        if first is None:  # removed meanwhile (retention): nothing to replay
            continue
        try:
            plan = plan_replay(run=first, from_step=from_step, version=version)
        except ReplayError as exc:
            why[first.pk] = (False, str(exc))
            latest = latest_attempts(first)
            for run_id in members[1:]:
                why[run_id] = _refused_alike(rows[run_id], first, latest, from_step, version)
            continue
        why.update(dict.fromkeys(members, (True, _verdict(plan))))
    return [
        BulkCheck(
            run_id=run_id,
            workflow=rows[run_id]["workflow__slug"],
            version=rows[run_id]["version__number"],
            error=rows[run_id]["error"],
            can=why[run_id][0],
            why=why[run_id][1],
        )
        for run_id in ids
        if run_id in why
    ]


def _values(ids: list[int]) -> list[tuple]:
    return list(Run.objects.filter(pk__in=ids).order_by().values_list(*RUN_FIELDS))


def _verdict(plan: ReplayPlan) -> str:
    found = (
        f"v{plan.version.number}: {len(plan.reused)} step(s) reused, {len(plan.rerun)} run again"
    )
    if plan.removed:
        found += "; not in this version: " + ", ".join(r.step_id for r in plan.removed)
    return found


def _refused_alike(
    row: dict[str, Any], first: Run, latest: dict, from_step: str, version: str
) -> tuple[bool, str]:
    """Why `row`'s run will not start, as `first` (its group's run) will not: planned as it
    is (its own id, status, origin), with the workflow, versions and attempts they share."""
    run = Run(
        pk=row["pk"],
        origin=row["origin"],
        status=row["status"],
        workflow_id=row["workflow_id"],
        version_id=row["version_id"],
        replay_of_id=row["replay_of_id"],
        error=row["error"],
    )
    run.workflow, run.version = first.workflow, first.version
    try:
        plan_replay(run=run, from_step=from_step, version=version, attempts=latest)
    except ReplayError as exc:
        return False, str(exc)
    # Not reached while a plan depends only on what a group shares; if that ever changes,
    # the run's own rows decide rather than its group's.
    own = Run.objects.select_related("workflow__published_version", "version").get(pk=run.pk)
    try:
        return True, _verdict(plan_replay(run=own, from_step=from_step, version=version))
    except ReplayError as exc:
        return False, str(exc)


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
