"""Start replays and shadow runs: a new run pinned to a version, with the original's
succeeded steps reused (see replay.py for the rules), journaled and audited.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from workflows.access import audit
from workflows.catalog.definition_parsing import parse_definition
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core import engine
from workflows.core.definition import InvalidDefinition
from workflows.core.states import StepStatus
from workflows.events.models import DeadLetter
from workflows.infra import tracing
from workflows.live import notify
from workflows.recovery.replay_plans import (
    FROM_FAILED,
    UNCHANGED,
    VERSION_ORIGINAL,
    ReplayError,
    plan_replay,
)
from workflows.runs.advance import advance_locked, idempotency_key, journal
from workflows.runs.control import admit
from workflows.runs.models import Run, StepRun


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
        started_span = tracing.replay_run_span(original)  # a new trace, linked to the old
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
            traceparent=started_span.traceparent,
        )
        started_span.end(run)
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
        started_span = tracing.replay_run_span(original, origin="shadow")
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
            traceparent=started_span.traceparent,
        )
        started_span.end(run)
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
