"""Trying a draft: freeze it into an unnumbered snapshot version and start a run of it
with a sample event, directly and not through the bus (nothing else hears of the sample).
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from workflows.access import audit
from workflows.authoring.draft_store import MAX_NOTE, RECENT_SAMPLES, TRY_CHANNEL, save_draft
from workflows.authoring.publishing import manual_event_type, schedule_event_type
from workflows.catalog.definition_parsing import parse_definition
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core import engine
from workflows.events.envelope import path_segment, validate
from workflows.events.intake import ingest_event
from workflows.events.models import Event, Webhook
from workflows.queries.events import visible_events
from workflows.runs.advance import advance_locked, journal
from workflows.runs.models import Run


# --- trying a draft ------------------------------------------------------------------------
def trigger_event_types(*, slug: str, raw: Any) -> list[str]:
    """The event types the draft's triggers listen to (webhooks that exist only)."""
    types: list[str] = []
    triggers = raw.get("triggers") if isinstance(raw, dict) else None
    for trigger in triggers if isinstance(triggers, list) else []:
        if not isinstance(trigger, dict):
            continue
        if isinstance(trigger.get("event"), str) and trigger["event"]:
            types.append(trigger["event"])
        elif isinstance(trigger.get("webhook"), str):
            webhook = Webhook.objects.filter(slug=trigger["webhook"]).first()
            if webhook is not None:
                types.append(webhook.event_type)
        elif trigger.get("schedule"):
            types.append(schedule_event_type(slug))
        elif trigger.get("manual"):
            types.append(manual_event_type(slug))
    return list(dict.fromkeys(types))


def recent_samples(
    *, slug: str, raw: Any, limit: int = RECENT_SAMPLES, hidden: frozenset[int] = frozenset()
) -> list[Event]:
    """Recent stored events of the types the draft's triggers listen to, newest first; none
    that belongs to a workflow in `hidden` (its data is not the editor's to read)."""
    types = trigger_event_types(slug=slug, raw=raw)
    if not types:
        return []
    samples = visible_events(Event.objects.filter(type__in=types), hidden=hidden)
    return list(samples.order_by("-id")[:limit])


def _sample_event(*, workflow: Workflow, data: Any, event_type: str, by: str) -> Event:
    """Store a typed-in sample as an event of its own, already marked published: it is the
    try run's event (its steps read it), but it never goes on the bus, so no trigger and no
    waiting run hears of it. Raises InvalidEvent or SchemaViolation."""
    types = trigger_event_types(slug=workflow.slug, raw=workflow.draft)
    event_type = event_type or (types[0] if types else f"signalbox.try.{workflow.slug}")
    attributes = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"/signalbox/try/{path_segment(by or 'someone')}",
        "type": event_type,
        "subject": workflow.slug,
        "time": timezone.now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if data is not None:
        attributes["datacontenttype"] = "application/json"
    envelope = validate(attributes, data=data, data_is_base64=False)
    event, _created = ingest_event(envelope=envelope, channel=TRY_CHANNEL, off_bus=True)
    return event


_NO_DATA: Any = object()


def try_draft(
    *,
    workflow: Workflow,
    by: str,
    event_id: int | None = None,
    data: Any = _NO_DATA,
    event_type: str = "",
    raw: Any = None,
    base_revision: int | None = None,
    client: str = "",
    hidden: frozenset[int] = frozenset(),
) -> Run:
    """Run the draft once with a sample event: a stored one (`event_id`, not one of a
    workflow in `hidden`: as if it did not exist) or `data` typed in.

    Freezes the draft into a snapshot version and starts a Run(origin="try") of it at once,
    outside the bus and outside the workflow's concurrency limits. Its steps really run
    (an HTTP step calls its URL). Raises InvalidDefinition when the draft is not valid,
    Event.DoesNotExist, InvalidEvent or SchemaViolation for a bad sample; DraftConflict
    when `raw` is stored on a `base_revision` that is not the stored one."""
    if raw is not None:
        save_draft(workflow=workflow, raw=raw, by=by, base_revision=base_revision, client=client)
    parse_definition(workflow.draft)
    with transaction.atomic():
        if event_id is not None:
            event = visible_events(Event.objects.all(), hidden=hidden).get(pk=event_id)
        else:
            event = _sample_event(
                workflow=workflow,
                data=None if data is _NO_DATA else data,
                event_type=event_type,
                by=by,
            )
        snapshot = WorkflowVersion.objects.create(
            workflow=workflow,
            number=None,
            kind="snapshot",
            definition=workflow.draft,
            note=f"draft tried by {by}"[:MAX_NOTE],
            published_by=by[:150],
        )
        run = Run.objects.create(
            workflow=workflow,
            version=snapshot,
            event=event,
            origin="try",
            correlation_id=event.correlation_id,
            partition_key=str((event.extensions or {}).get("partitionkey") or event.subject or ""),
        )
        journal(run, "run.try", by=by, snapshot=snapshot.pk, at=timezone.now().isoformat())
        run.save(update_fields=["seq"])
        # Not through admit(): a try is someone waiting at the editor, not a queued event,
        # and it takes no slot from the workflow's real runs.
        advance_locked(run, engine.RunStarted())
        audit.record(
            actor=by,
            action="workflow.try",
            target_type="workflow",
            target_id=workflow.slug,
            details={"run": run.pk, "snapshot": snapshot.pk, "event": event.pk},
        )
    return run
