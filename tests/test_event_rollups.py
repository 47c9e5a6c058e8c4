"""The overview's per-minute event rollups (workflows/queries/event_rollups.py): the
overview counts the same with and without them, for every user, reads closed minutes from
them, and the last minutes from the store."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models import F
from django.utils import timezone

from dashboard import metrics
from tests.factories import definition, log_step
from tests.test_replay import drive, publish, trigger
from workflows.events.models import Event
from workflows.queries import event_rollups
from workflows.queries.models import EventRollup
from workflows.runs.models import Run


@pytest.fixture
def earlier_outcomes(db):
    """Two runs that succeed and one that fails, all ten minutes ago (closed minutes)."""
    publish("orders", definition(log_step("received"), log_step("done", after=("received",))))
    publish(
        "refunds",
        definition({"id": "boom", "kind": "fail", "config": {"message": "no"}}, event="com.x.r"),
    )
    ok = [drive(trigger("orders", {"n": n})) for n in range(2)]
    bad = drive(trigger("refunds", type_="com.x.r"))
    assert [r.status for r in ok] == ["succeeded", "succeeded"] and bad.status == "failed"
    Event.objects.update(received_at=F("received_at") - timedelta(minutes=10))
    refunds = Run.objects.filter(workflow__slug="refunds").values_list("workflow", flat=True)
    return frozenset(refunds)


def _counted(window: str = "15m", hidden: frozenset[int] = frozenset()):
    data = metrics.compute_overview(window, hidden=hidden)
    keys = ("runs_started", "runs_succeeded", "runs_failed", "events_in_window")
    return (
        {k: data.figures[k] for k in keys},
        data.events_per_second,
        data.runs_per_minute,
    )


def test_the_overview_counts_the_same_from_rollups_for_every_user(earlier_outcomes):
    hidden = earlier_outcomes
    live = {w: (_counted(w), _counted(w, hidden)) for w in ("15m", "1h", "6h")}
    assert live["15m"][0][0] == {
        "runs_started": 3,
        "runs_succeeded": 2,
        "runs_failed": 1,
        "events_in_window": 3,
    }
    assert live["15m"][1][0]["runs_started"] == 2  # the refunds team's runs left out

    assert event_rollups.catch_up() > 0
    assert EventRollup.objects.exclude(type=event_rollups.MARKER).exists()
    assert EventRollup.objects.filter(workflow="refunds").exists()

    for window, (everyone, team) in live.items():
        assert _counted(window) == everyone, window
        assert _counted(window, hidden) == team, window


def test_closed_minutes_are_read_from_rollups_and_the_last_minutes_from_the_store(
    earlier_outcomes,
):
    event_rollups.catch_up()
    rows = EventRollup.objects.count()
    assert event_rollups.catch_up() == 0  # every closed minute is done: nothing again
    minutes = EventRollup.objects.filter(type=event_rollups.MARKER).values_list("minute", flat=True)
    event_rollups.roll_up(minutes)  # rolling a minute up again changes nothing
    assert EventRollup.objects.count() == rows
    # The rolled-up minutes' events gone from the store: still counted, from their rollups.
    Event.objects.filter(received_at__lt=event_rollups.closed_before()).delete()
    assert Event.objects.count() == 0
    figures = metrics.compute_overview("15m").figures
    assert (figures["runs_started"], figures["events_in_window"]) == (3, 3)

    # A new event, in the minute still open, comes from the store.
    trigger("orders", {"n": 9})
    figures = metrics.compute_overview("15m").figures
    assert (figures["runs_started"], figures["events_in_window"]) == (4, 4)


def test_rollups_older_than_the_horizon_are_forgotten(db):
    long_ago = event_rollups.floor_minute(timezone.now() - timedelta(hours=9))
    EventRollup.objects.create(minute=long_ago, type="com.x", workflow="", count=3)
    event_rollups.tick(limit=1)
    assert not EventRollup.objects.filter(minute=long_ago).exists()
