"""Re-drive stored events into a chosen workflow: backfill a new workflow, or deliver again
what a broken version dropped.

Events are picked from the event store by type, source and received time, oldest first, and
each becomes a run (origin "redrive") of the chosen workflow, pinned to the version asked
for (a published number, or the latest). A dry run answers which runs would start and
starts none. The workflow's trigger filter for the event's type still applies: an event the
workflow would never have taken is listed as not starting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from workflows.access import audit
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.events.models import Event
from workflows.queries.events import visible_events
from workflows.runs.control import admit
from workflows.runs.matching import trigger_accepts
from workflows.runs.models import Run

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
LATEST = "latest"


class RedriveError(Exception):
    def __init__(self, message: str, *, status: int = 400, kind: str = "invalid-redrive"):
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class EventSelection:
    type: str
    source: str = ""
    after: datetime | None = None
    before: datetime | None = None
    limit: int = DEFAULT_LIMIT

    def as_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "source": self.source or None,
            "after": self.after.isoformat() if self.after else None,
            "before": self.before.isoformat() if self.before else None,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class Delivery:
    event: Event
    starts: bool
    why: str = ""
    run: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "event": self.event.pk,
            "ce_id": self.event.ce_id,
            "type": self.event.type,
            "source": self.event.source,
            "received_at": self.event.received_at.isoformat(),
            "starts": self.starts,
            "why": self.why or None,
            "run": self.run,
        }


@dataclass(frozen=True)
class RedrivePlan:
    workflow: Workflow
    version: WorkflowVersion
    selection: EventSelection
    deliveries: list[Delivery]
    dry_run: bool

    @property
    def starting(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.starts]

    def as_json(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow.slug,
            "version": self.version.number,
            "dry_run": self.dry_run,
            "selection": self.selection.as_json(),
            "matched": len(self.deliveries),
            "would_start" if self.dry_run else "started": len(self.starting),
            "runs": [d.run for d in self.deliveries if d.run],
            "deliveries": [d.as_json() for d in self.deliveries],
        }


def select_events(
    selection: EventSelection, *, hidden: frozenset[int] = frozenset()
) -> list[Event]:
    """The stored events the selection names, oldest first; none that belongs to a workflow
    in `hidden` (another team's run events and emitted events)."""
    if not selection.type:
        raise RedriveError("pick the events by type (and optionally source and time range)")
    if not 1 <= selection.limit <= MAX_LIMIT:
        raise RedriveError(f"limit must be from 1 to {MAX_LIMIT}")
    if selection.after and selection.before and selection.after >= selection.before:
        raise RedriveError("after must be earlier than before")
    events = Event.objects.filter(type=selection.type)
    if selection.source:
        events = events.filter(source=selection.source)
    if selection.after:
        events = events.filter(received_at__gte=selection.after)
    if selection.before:
        events = events.filter(received_at__lt=selection.before)
    events = visible_events(events, hidden=hidden)
    return list(events.order_by("received_at", "id")[: selection.limit])


def resolve_target(
    workflow_slug: str, version: str | int | None
) -> tuple[Workflow, WorkflowVersion]:
    workflow = (
        Workflow.objects.select_related("published_version").filter(slug=workflow_slug).first()
    )
    if workflow is None:
        raise RedriveError(f"no workflow {workflow_slug}", status=404, kind="not-found")
    if version in (None, "", LATEST):
        if workflow.published_version is None:
            raise RedriveError(f"{workflow_slug} has no published version", status=409)
        return workflow, workflow.published_version
    try:
        number = int(version)
    except (TypeError, ValueError) as exc:
        raise RedriveError(f"version must be {LATEST!r} or a version number") from exc
    pinned = workflow.versions.filter(number=number, kind="published").first()
    if pinned is None:
        raise RedriveError(f"{workflow_slug} has no version {number}", status=404, kind="not-found")
    return workflow, pinned


def deliver(*, event: Event, workflow: Workflow, version: WorkflowVersion) -> Run:
    """One re-driven run of `event`. Call inside a transaction."""
    run = Run.objects.create(
        workflow=workflow,
        version=version,
        event=event,
        origin="redrive",
        correlation_id=event.correlation_id,
        partition_key=str((event.extensions or {}).get("partitionkey") or event.subject or ""),
    )
    if not admit(run):
        from workflows.live import notify

        notify.run_changed(
            run_id=run.pk, seq=run.seq, workflow_slug=workflow.slug, status=run.status
        )
    return run


def redrive_events(
    *,
    workflow_slug: str,
    selection: EventSelection,
    version: str | int | None = LATEST,
    dry_run: bool = False,
    actor: str = "",
    reason: str = "",
    hidden: frozenset[int] = frozenset(),
) -> RedrivePlan:
    workflow, pinned = resolve_target(workflow_slug, version)
    planned = []
    for event in select_events(selection, hidden=hidden):
        if trigger_accepts(pinned, event):
            planned.append(Delivery(event=event, starts=True))
        else:
            planned.append(
                Delivery(
                    event=event, starts=False, why="the workflow's trigger filter does not take it"
                )
            )
    if dry_run:
        return RedrivePlan(workflow, pinned, selection, planned, dry_run=True)
    if not actor:
        raise RedriveError("a re-drive needs an actor for the audit trail")
    with transaction.atomic():
        done = []
        for delivery in planned:
            if delivery.starts:
                run = deliver(event=delivery.event, workflow=workflow, version=pinned)
                done.append(Delivery(delivery.event, True, run=run.pk))
            else:
                done.append(delivery)
        plan = RedrivePlan(workflow, pinned, selection, done, dry_run=False)
        audit.record(
            actor=actor,
            action="events.redrive",
            target_type="workflow",
            target_id=workflow.slug,
            reason=reason,
            details={
                "version": pinned.number,
                "selection": selection.as_json(),
                "events": [d.event.pk for d in done if d.starts],
                "runs": [d.run for d in done if d.run],
                "not_started": [d.event.pk for d in done if not d.starts],
            },
        )
    return plan
