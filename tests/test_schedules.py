"""Schedules: cron and @every producers, one event per tick, however many schedulers run."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone

from tests.factories import definition, log_step
from tests.waiting import wait_until
from workflows.events.models import Event, Schedule
from workflows.events.schedules import (
    InvalidSchedule,
    fire,
    iso,
    parse,
    tick_envelope,
)
from workflows.runs.matching import ingest_event
from workflows.runs.models import Run


def publish(api, slug: str, body: dict) -> None:
    assert api.put(f"/api/v1/workflows/{slug}", json=body).status_code in (200, 201)
    assert api.post(f"/api/v1/workflows/{slug}/publish").status_code == 201


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ticks(expression: str, tz: str, after: datetime, count: int) -> list[str]:
    spec, found = parse(expression, tz), []
    for _ in range(count):
        after = spec.next_after(after)
        found.append(iso(after))
    return found


@pytest.mark.django_db(transaction=True)
def test_an_every_schedule_run_by_two_schedulers_emits_one_event_per_tick(api, stack):
    publish(api, "heartbeat", definition(log_step("beat"), event="com.example.tick"))
    # A second scheduler process beside the stack's own, both firing the same schedule.
    stack.start("scheduler-2", [sys.executable, "manage.py", "scheduler", "--interval", "0.2"])
    try:
        call_command(
            "schedules",
            "add",
            "every-second",
            "@every 1s",
            "--type",
            "com.example.tick",
            "--data",
            '{"site": "lyon"}',
        )

        def three_ticks():
            found = list(Event.objects.filter(source="/schedules/every-second").order_by("ce_id"))
            return found if len(found) >= 3 else None

        events = wait_until(three_ticks, message="three ticks")
    finally:
        stack.stop("scheduler-2")
        stack.processes.pop("scheduler-2")

    stamps = [event.ce_id for event in events]
    assert len(stamps) == len(set(stamps))
    for event in events:
        tick = datetime.fromisoformat(event.ce_id)
        assert tick.microsecond == 0 and tick.utcoffset() == timedelta(0)
        assert event.ce_id.endswith("Z")
        assert event.type == "com.example.tick" and event.subject == "every-second"
        assert event.channel == "schedule"
        assert event.data == {"scheduled_for": event.ce_id, "site": "lyon"}
        assert iso(event.time) == event.ce_id
    wait_until(
        lambda: Run.objects.filter(event__in=events).count() == len(events),
        message="a run per tick",
    )
    assert Run.objects.filter(event__in=events).values("event").distinct().count() == len(events)


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_firing_the_same_tick_concurrently_make_one_event():
    # Disabled, so that a running scheduler process leaves it to the two below.
    schedule = Schedule.objects.create(
        name="race", cron="@every 1m", event_type="com.example.race", enabled=False
    )
    Schedule.objects.filter(pk=schedule.pk).update(created_at=timezone.now() - timedelta(hours=1))
    now = timezone.now()
    start = threading.Barrier(2)
    results = []

    def scheduler():
        # Each "scheduler" holds its own reading of the schedule, like a separate process.
        mine = Schedule.objects.get(pk=schedule.pk)
        start.wait()
        try:
            results.append(fire(mine, now=now))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    emitted = [tick for tick in results if tick is not None]
    assert len(results) == 2 and len(emitted) == 1
    assert Event.objects.filter(source="/schedules/race").count() == 1
    assert Event.objects.get(source="/schedules/race").ce_id == iso(emitted[0])
    assert Schedule.objects.get(pk=schedule.pk).last_tick == emitted[0]


@pytest.mark.django_db(transaction=True)
def test_a_tick_emitted_twice_by_schedulers_that_missed_each_others_claim_is_one_event():
    schedule = Schedule.objects.create(
        name="twice", cron="*/5 * * * *", event_type="com.example.twice", enabled=False
    )
    tick = utc(2026, 1, 31, 9, 5)

    first, created_first = ingest_event(envelope=tick_envelope(schedule, tick), channel="schedule")
    second, created_second = ingest_event(
        envelope=tick_envelope(schedule, tick), channel="schedule"
    )

    assert created_first and not created_second and first.pk == second.pk
    assert first.ce_id == "2026-01-31T09:05:00Z" and first.source == "/schedules/twice"


@pytest.mark.django_db(transaction=True)
def test_after_downtime_only_the_latest_missed_tick_is_emitted():
    schedule = Schedule.objects.create(
        name="catch-up",
        cron="@every 1m",
        event_type="com.example.catchup",
        enabled=False,
        last_tick=utc(2026, 1, 31, 8, 0),
    )
    now = utc(2026, 1, 31, 9, 30, 20)

    assert fire(schedule, now=now) == utc(2026, 1, 31, 9, 30)
    assert fire(schedule, now=now) is None
    assert fire(schedule, now=now + timedelta(seconds=40)) == utc(2026, 1, 31, 9, 31)

    stamps = sorted(
        Event.objects.filter(source="/schedules/catch-up").values_list("ce_id", flat=True)
    )
    assert stamps == ["2026-01-31T09:30:00Z", "2026-01-31T09:31:00Z"]


@pytest.mark.django_db(transaction=True)
def test_a_new_schedule_waits_for_its_first_tick_instead_of_firing_at_once():
    schedule = Schedule.objects.create(
        name="fresh",
        cron="0 9 * * *",
        timezone="Europe/Paris",
        event_type="com.example.fresh",
        enabled=False,
    )
    created = schedule.created_at

    assert fire(schedule, now=created + timedelta(seconds=1)) is None
    assert not Event.objects.filter(source="/schedules/fresh").exists()


def test_cron_is_evaluated_on_the_wall_clock_of_the_schedules_time_zone():
    # 09:00 in New York is 14:00 UTC in winter and 13:00 UTC once DST starts (9 March 2025).
    assert ticks("0 9 * * *", "America/New_York", utc(2025, 3, 7, 15), 3) == [
        "2025-03-08T14:00:00Z",
        "2025-03-09T13:00:00Z",
        "2025-03-10T13:00:00Z",
    ]
    # Weekdays are the zone's weekdays: Monday 00:30 in Tokyo is Sunday 15:30 UTC.
    assert ticks("30 0 * * 1", "Asia/Tokyo", utc(2026, 1, 1), 1) == ["2026-01-04T15:30:00Z"]


def test_a_time_skipped_by_the_spring_forward_jump_fires_once_at_the_jump():
    # Paris, 30 March 2025: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never happens.
    assert ticks("30 2 * * *", "Europe/Paris", utc(2025, 3, 29, 12), 2) == [
        "2025-03-30T01:00:00Z",
        "2025-03-31T00:30:00Z",
    ]
    assert ticks("*/30 * * * *", "Europe/Paris", utc(2025, 3, 30, 0, 10), 3) == [
        "2025-03-30T00:30:00Z",
        "2025-03-30T01:00:00Z",
        "2025-03-30T01:30:00Z",
    ]


def test_a_time_repeated_by_the_fall_back_fires_once_at_its_first_occurrence():
    # Paris, 26 October 2025: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    assert ticks("30 2 * * *", "Europe/Paris", utc(2025, 10, 25, 12), 2) == [
        "2025-10-26T00:30:00Z",
        "2025-10-27T01:30:00Z",
    ]
    spec = parse("30 2 * * *", "Europe/Paris")
    assert spec.due(after=utc(2025, 10, 26, 0, 30), now=utc(2025, 10, 26, 1, 45)) is None


def test_every_ticks_are_multiples_of_the_interval_whatever_the_time_zone():
    assert ticks("@every 30s", "UTC", utc(2026, 1, 1, 0, 0, 10), 2) == [
        "2026-01-01T00:00:30Z",
        "2026-01-01T00:01:00Z",
    ]
    assert ticks("@every 5m", "Asia/Kolkata", utc(2026, 1, 1, 0, 3), 1) == ["2026-01-01T00:05:00Z"]
    assert ticks("@every 1h30m", "UTC", utc(2026, 1, 1, 0, 0), 1) == ["2026-01-01T01:30:00Z"]
    assert ticks("@hourly", "UTC", utc(2026, 1, 1, 0, 1), 1) == ["2026-01-01T01:00:00Z"]


@pytest.mark.parametrize(
    ("expression", "tz", "message"),
    [
        ("61 * * * *", "UTC", "is not a valid cron expression"),
        ("* * * *", "UTC", "a cron expression has 5 fields"),
        ("* * * * * *", "UTC", "a cron expression has 5 fields"),
        ("@every soon", "UTC", "write @every with a duration such as 30s"),
        ("@every 0s", "UTC", "at least 1s"),
        ("0 0 31 2 *", "UTC", "never fires"),
        ("* * * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("* * * * *", "../../etc/passwd", "unknown time zone"),
    ],
)
def test_an_invalid_schedule_is_refused_with_a_message_naming_the_problem(expression, tz, message):
    with pytest.raises(InvalidSchedule, match=message):
        parse(expression, tz)


@pytest.mark.django_db
def test_schedules_command_adds_lists_and_removes_a_schedule(capsys):
    call_command(
        "schedules",
        "add",
        "paris-morning",
        "0 9 * * 1-5",
        "--type",
        "com.example.morning",
        "--tz",
        "Europe/Paris",
        "--disabled",
    )
    call_command("schedules", "list")
    listed = capsys.readouterr().out

    assert "paris-morning\t0 9 * * 1-5\tEurope/Paris\tcom.example.morning\tdisabled" in listed
    schedule = Schedule.objects.get(name="paris-morning")
    assert (schedule.enabled, schedule.timezone, schedule.data) == (False, "Europe/Paris", {})
    call_command("schedules", "remove", "paris-morning")
    assert not Schedule.objects.filter(name="paris-morning").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad-cron", "75 * * * *", "--type", "t"], "'75 \\* \\* \\* \\*' is not a valid cron"),
        (
            ["bad-tz", "@every 5m", "--type", "t", "--tz", "Europe/Atlantis"],
            "unknown time zone 'Europe/Atlantis'",
        ),
        (["bad-data", "@every 5m", "--type", "t", "--data", "[1"], "--data is not valid JSON"),
        (["bad name", "@every 5m", "--type", "t"], "letters, digits"),
    ],
)
def test_schedules_add_refuses_bad_input_with_a_clear_command_error(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("schedules", "add", *args)
    assert not Schedule.objects.exists()


@pytest.mark.django_db
def test_removing_an_unknown_schedule_says_so():
    with pytest.raises(CommandError, match="no schedule named 'ghost'"):
        call_command("schedules", "remove", "ghost")
