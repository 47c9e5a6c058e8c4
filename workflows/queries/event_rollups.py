"""Per-minute event counts for the overview, kept by the scheduler.

Counting a six-hour window from the event store read every event in it (hundreds of
thousands at a million stored runs); the overview now reads one row per minute, type and
owning workflow from EventRollup for every minute rolled up, and counts only the rest (the
last couple of minutes, or minutes the scheduler has not reached) from the events.

A minute is rolled up once it ended ROLLUP_DELAY ago: an event's received_at is taken before
its transaction commits, and commits lag by far less than that, so the counts are final.
Rolling up is idempotent (a unique minute, type, workflow; conflicts ignored), so two
schedulers may do it at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    Count,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Substr, TruncMinute
from django.utils import timezone

from workflows.events.models import Event
from workflows.queries.events import _RUN_PATH, _RUN_PATH_WITH_ID
from workflows.queries.models import EventRollup
from workflows.runs.models import Run
from workflows.runs.producers import WORKFLOW_EXTENSION

ROLLUP_DELAY = timedelta(minutes=2)
# How far back the scheduler keeps minutes rolled up: the overview's longest window, and a
# little more.
HORIZON = timedelta(hours=6, minutes=10)
MINUTES_PER_TICK = 30  # a bounded amount of work per scheduler round
MINUTE = timedelta(minutes=1)
MARKER = ""  # the type of the row that says "this minute is rolled up"


def floor_minute(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)


def owner() -> Case:
    """The slug of the workflow an event belongs to, "" for everyone's: the rule of
    event_selectors.hidden_events (its run events and what its steps emitted carry the slug
    in `sbworkflow`; older emitted events are known by their /signalbox/runs/<id> source)."""
    run_id = Cast(Substr(OuterRef("source"), len(_RUN_PATH) + 1), BigIntegerField())
    emitter = Subquery(Run.objects.filter(pk=run_id).order_by().values("workflow__slug")[:1])
    return Case(
        When(
            Q(channel="run", extensions__has_key=WORKFLOW_EXTENSION),
            then=KeyTextTransform(WORKFLOW_EXTENSION, "extensions"),
        ),
        When(Q(channel="run", source__regex=_RUN_PATH_WITH_ID), then=emitter),
        default=Value(""),
        output_field=CharField(),
    )


def counts(start: datetime, end: datetime) -> list[tuple[datetime, str, str, int]]:
    """(minute, type, owner, count) of the events received in [start, end), from the store."""
    rows = (
        Event.objects.filter(received_at__gte=start, received_at__lt=end)
        .annotate(minute=TruncMinute("received_at"), owner=owner())
        .values_list("minute", "type", "owner")
        .annotate(n=Count("id"))
        .order_by()
    )
    return [(minute, t, slug or "", int(n)) for minute, t, slug, n in rows]


def roll_up(minutes: Iterable[datetime]) -> int:
    """Count the given closed minutes from the event store and keep them; returns how many
    rows were written. The minutes are read in one query per run of consecutive minutes."""
    wanted = sorted(set(minutes))
    written = 0
    for start, end in _runs_of(wanted):
        found = counts(start, end)
        rows = [EventRollup(minute=m, type=t, workflow=w, count=n) for m, t, w, n in found]
        minute = start
        while minute < end:
            rows.append(EventRollup(minute=minute, type=MARKER, workflow="", count=0))
            minute += MINUTE
        with transaction.atomic():
            EventRollup.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
        written += len(rows)
    return written


def _runs_of(minutes: list[datetime]) -> list[tuple[datetime, datetime]]:
    runs: list[tuple[datetime, datetime]] = []
    for minute in minutes:
        if runs and runs[-1][1] == minute:
            runs[-1] = (runs[-1][0], minute + MINUTE)
        else:
            runs.append((minute, minute + MINUTE))
    return runs


def rolled_up(start: datetime, end: datetime) -> set[datetime]:
    """The minutes in [start, end) that are rolled up."""
    return set(
        EventRollup.objects.filter(minute__gte=start, minute__lt=end, type=MARKER).values_list(
            "minute", flat=True
        )
    )


def closed_before(now: datetime | None = None) -> datetime:
    """Minutes starting before this are final."""
    return floor_minute((now or timezone.now()) - ROLLUP_DELAY)


def tick(*, now: datetime | None = None, limit: int = MINUTES_PER_TICK) -> int:
    """The scheduler's round: roll up the newest closed minutes not rolled up yet (at most
    `limit`, newest first, so after a pause the overview's recent minutes come first), and
    forget rollups older than the horizon. Returns the number of minutes rolled up."""
    now = now or timezone.now()
    end = closed_before(now)
    start = floor_minute(now - HORIZON)
    done = rolled_up(start, end)
    missing = []
    minute = end - MINUTE
    while minute >= start and len(missing) < limit:
        if minute not in done:
            missing.append(minute)
        minute -= MINUTE
    if missing:
        roll_up(missing)
    EventRollup.objects.filter(minute__lt=start).delete()
    return len(missing)


def catch_up(*, now: datetime | None = None) -> int:
    """Every closed minute within the horizon, at once (after a bulk load, in tests)."""
    total = 0
    while True:
        rolled = tick(now=now, limit=10_000)
        total += rolled
        if not rolled:
            return total
