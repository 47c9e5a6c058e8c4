"""The trigger subscriptions the bus consumer starts runs for, kept in the process by id.

No subscription row is ever updated: publishing deletes a workflow's rows and inserts new
ones, with new ids. So what an id stands for (its event type, workflow and version) never
goes stale; only which ids exist changes. The consumer's "who hears these types" query
(`matching.hearing`) returns the ids with every read anyway. Only ids not seen before are
read here, with their workflow's slug and their version's number. A read of known types
then skips the query that joined subscriptions, workflows and versions, the costliest to
build of a lone run's path.

The instances handed out are built anew on each call from the kept values, every other
field deferred (read from the database if touched), so nothing a caller sets on one is
shared, and no mutable column (a workflow's name, team or draft) is served from memory.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping

from django.db import connection

from workflows.catalog.models import TriggerSubscription, Workflow, WorkflowVersion

# Ids of deleted subscriptions are never asked for again; past this many, start afresh.
MAX_KEPT = 16384

_SUBSCRIPTION = ("id", "event_type", "workflow_id", "version_id")
_WORKFLOW = ("id", "slug")
_VERSION = ("id", "workflow_id", "number")

# id -> (event_type, workflow_id, version_id, workflow slug, version number)
_kept: dict[int, tuple] = {}
_lock = threading.Lock()


def by_type(
    ids: Mapping[str, Collection[int]], types: Collection[str]
) -> dict[str, list[TriggerSubscription]]:
    """The subscriptions `ids` names for each of `types` (by type, in id order), with their
    workflows and versions; those not kept yet are read in one query."""
    missing = [pk for t in types for pk in ids.get(t, ()) if pk not in _kept]
    if missing:
        _remember(missing)
    found: dict[str, list[TriggerSubscription]] = {t: [] for t in types}
    for event_type in types:
        for pk in sorted(ids.get(event_type, ())):
            values = _kept.get(pk)
            if values is not None:  # else deleted since the hearing: no run for it
                found[event_type].append(_subscription(pk, values))
    return found


def _remember(ids: list[int]) -> None:
    rows = TriggerSubscription.objects.filter(pk__in=ids).values_list(
        "id", "event_type", "workflow_id", "version_id", "workflow__slug", "version__number"
    )
    with _lock:
        if len(_kept) + len(ids) > MAX_KEPT:
            _kept.clear()
        for pk, *values in rows:
            _kept[pk] = tuple(values)


def _subscription(pk: int, values: tuple) -> TriggerSubscription:
    event_type, workflow_id, version_id, slug, number = values
    db = connection.alias
    subscription = TriggerSubscription.from_db(
        db, _SUBSCRIPTION, (pk, event_type, workflow_id, version_id)
    )
    subscription.workflow = Workflow.from_db(db, _WORKFLOW, (workflow_id, slug))
    subscription.version = WorkflowVersion.from_db(db, _VERSION, (version_id, workflow_id, number))
    return subscription


def forget() -> None:
    """Drop every kept subscription (tests that reuse ids across databases)."""
    with _lock:
        _kept.clear()
