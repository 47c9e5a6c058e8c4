"""Schedules: cron (5 fields) or `@every <duration>` producers that emit one event per tick.

A tick's event is deterministic: source `/schedules/<name>`, id = the tick's UTC timestamp
(`2026-01-31T09:00:00Z`). Ingest is unique on (source, id), so two schedulers that both
emit a tick make one event. Each scheduler also claims the tick with a conditional UPDATE
of `last_tick`, so normally only one of them even tries.

Time zones: cron fields are wall-clock times in the schedule's zone. A tick fires at the
first instant whose wall clock reads the scheduled time or later, which settles DST:
- a time skipped by the spring-forward jump fires at the jump (02:30 → 03:00 CEST);
- a time repeated by the fall-back fires once, at its first occurrence.
`@every` ticks are multiples of the interval since the Unix epoch (`@every 5m` fires at
:00, :05, …), whatever the zone, so every scheduler computes the same ones.

After downtime only the most recent missed tick is emitted (no flood of catch-up events).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from workflows.events.envelope import Envelope, envelope_json
from workflows.events.models import DeadLetter, Schedule
from workflows.infra import tracing

log = logging.getLogger("signalbox.schedules")

SOURCE_PREFIX = "/schedules/"
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EVERY = re.compile(r"^@every\s+((?:\d+[smhd])+)$")
EVERY_PART = re.compile(r"(\d+)([smhd])")
# Walking cron candidates past a DST fold takes a few dozen steps; a bound keeps a
# pathological expression from spinning forever.
MAX_STEPS = 100_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidSchedule(ValueError):
    pass


@dataclass(frozen=True)
class Spec:
    """A parsed schedule: either `every` seconds, or a 5-field `cron` expression in `tz`."""

    tz: ZoneInfo
    cron: str = ""
    every: int = 0

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after `after` (aware), as an aware UTC datetime."""
        after = after.astimezone(UTC)
        if self.every:
            elapsed = int((after - EPOCH).total_seconds() // self.every)
            return EPOCH + timedelta(seconds=(elapsed + 1) * self.every)
        wall = after.astimezone(self.tz).replace(tzinfo=None)
        candidates = croniter(self.cron, wall)
        for _ in range(MAX_STEPS):
            tick = instant_of(candidates.get_next(datetime), self.tz)
            if tick > after:
                return tick
        raise InvalidSchedule(f"{self.cron!r} yields no tick after {after.isoformat()}")

    def latest_at_or_before(self, now: datetime) -> datetime:
        """The last tick at or before `now`."""
        now = now.astimezone(UTC)
        if self.every:
            elapsed = int((now - EPOCH).total_seconds() // self.every)
            return EPOCH + timedelta(seconds=elapsed * self.every)
        wall = now.astimezone(self.tz).replace(tzinfo=None) + timedelta(seconds=1)
        candidates = croniter(self.cron, wall)
        tick = None
        for _ in range(MAX_STEPS):
            tick = instant_of(candidates.get_prev(datetime), self.tz)
            if tick <= now:
                break
        if tick is None or tick > now:
            raise InvalidSchedule(f"{self.cron!r} yields no tick before {now.isoformat()}")
        # Around a DST fold the wall-clock order and the real order differ: walk forward.
        for _ in range(MAX_STEPS):
            following = self.next_after(tick)
            if following > now:
                return tick
            tick = following
        return tick

    def due(self, *, after: datetime, now: datetime) -> datetime | None:
        """The tick to emit now: the latest one in (after, now], or None. Older missed
        ticks are skipped on purpose (catch up once, do not flood)."""
        if self.next_after(after) > now:
            return None
        return self.latest_at_or_before(now)


def instant_of(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) whose wall clock in `tz` reads `wall` or later."""
    first = wall.replace(tzinfo=tz, fold=0)  # fold=0: the earlier of a repeated time
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
        return first.astimezone(UTC)
    # `wall` falls in a gap (clocks jumped over it): find the jump by bisection on whole
    # seconds between its two readings (fold=1 uses the offset after the jump, which puts
    # it before the jump; fold=0 the offset before, which puts it after).
    low = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    high = int(first.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSchedule(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris or UTC"
        ) from exc


def parse(expression: str, tz_name: str = "UTC") -> Spec:
    """Parse and check a schedule; raises InvalidSchedule with a message for people."""
    tz = zone(tz_name)
    text = " ".join(expression.split())
    every = EVERY.match(text)
    if every:
        seconds = sum(int(n) * UNITS[u] for n, u in EVERY_PART.findall(every.group(1)))
        if seconds < 1:
            raise InvalidSchedule(f"{expression!r}: the interval must be at least 1s")
        return Spec(tz=tz, every=seconds)
    if text.startswith("@every"):
        raise InvalidSchedule(
            f"{expression!r}: write @every with a duration such as 30s, 5m, 1h or 1h30m"
        )
    text = ALIASES.get(text, text)
    if len(text.split()) != 5:
        raise InvalidSchedule(
            f"{expression!r}: a cron expression has 5 fields (minute hour day-of-month "
            "month day-of-week), e.g. '*/5 * * * *', or use @every 30s / @hourly"
        )
    if not croniter.is_valid(text):
        raise InvalidSchedule(f"{expression!r} is not a valid cron expression")
    spec = Spec(tz=tz, cron=text)
    try:
        spec.next_after(timezone.now())  # e.g. "0 0 31 2 *" never happens
    except Exception as exc:
        raise InvalidSchedule(f"{expression!r} never fires") from exc
    return spec


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tick_envelope(schedule: Schedule, tick: datetime) -> Envelope:
    stamp = iso(tick)
    return Envelope(
        id=stamp,
        source=f"{SOURCE_PREFIX}{schedule.name}",
        type=schedule.event_type,
        subject=schedule.name,
        time=tick.astimezone(UTC),
        datacontenttype="application/json",
        data={"scheduled_for": stamp, **(schedule.data or {})},
    )


def fire(schedule: Schedule, *, now: datetime | None = None) -> datetime | None:
    """Emit the schedule's due tick, if any. Returns the tick emitted by this call.

    `schedule` is what the caller read; the tick is claimed with a conditional UPDATE on
    that `last_tick`, so of two schedulers holding the same reading one emits it.
    """
    from workflows.events.intake import ingest_event
    from workflows.events.schemas import SchemaViolation

    now = now or timezone.now()
    spec = parse(schedule.cron, schedule.timezone)
    tick = spec.due(after=schedule.last_tick or schedule.created_at, now=now)
    if tick is None:
        return None
    envelope = tick_envelope(schedule, tick)
    traced, refused = None, ""
    try:
        with transaction.atomic():
            claimed = Schedule.objects.filter(pk=schedule.pk, last_tick=schedule.last_tick)
            if schedule.last_tick is None:
                claimed = Schedule.objects.filter(pk=schedule.pk, last_tick__isnull=True)
            if not claimed.update(last_tick=tick):
                return None  # another scheduler moved it first
            # A tick continues nobody's trace: its ingest span starts a new one, and the
            # event carries it (the runs' spans hang under it).
            traced = tracing.ingest(
                [envelope],
                channel="schedule",
                kind="INTERNAL",
                attributes={"signalbox.schedule": schedule.name},
            )
            try:
                ingest_event(envelope=envelope, channel="schedule", trace=traced.traceparent)
            except SchemaViolation as exc:
                refused = "SchemaViolation"
                # The tick is spent either way: retrying would only repeat the violation.
                DeadLetter.objects.create(
                    kind="event",
                    reason=f"schedule {schedule.name}: data does not match its schema: {exc}",
                    payload={
                        "channel": "schedule",
                        "schedule": schedule.name,
                        "errors": exc.errors,
                        "cloudevent": envelope_json(envelope),
                    },
                )
    except Exception as exc:
        if traced is not None:
            traced.end(error=type(exc).__name__)
        raise
    traced.end(stored=0 if refused else 1, error=refused)
    schedule.last_tick = tick
    log.info("schedule %s emitted its %s tick", schedule.name, iso(tick))
    return tick


def fire_due(*, now: datetime | None = None) -> int:
    """The scheduler loop's step: emit every enabled schedule's due tick."""
    now = now or timezone.now()
    fired = 0
    for schedule in Schedule.objects.filter(enabled=True):
        try:
            if fire(schedule, now=now):
                fired += 1
        except InvalidSchedule as exc:
            # Saved through the CLI this cannot happen; an edit by hand can.
            log.error("schedule %s is invalid and skipped: %s", schedule.name, exc)
        except (OperationalError, InterfaceError):
            raise  # the database is away: the loop waits and tries again
        except Exception:
            log.exception("schedule %s failed; the others go on", schedule.name)
    return fired


def describe(schedule: Schedule, *, now: datetime | None = None) -> str:
    """The next tick, for listings."""
    try:
        spec = parse(schedule.cron, schedule.timezone)
    except InvalidSchedule as exc:
        return f"invalid: {exc}"
    after = max(schedule.last_tick or schedule.created_at, now or timezone.now())
    return iso(spec.next_after(after))


# -- configuration (the `schedules` command) -------------------------------------------


def add_schedule(
    *,
    name: str,
    cron: str,
    event_type: str,
    tz_name: str = "UTC",
    data: dict | None = None,
    enabled: bool = True,
) -> Schedule:
    """Validate and save a schedule. Raises InvalidSchedule with a message for people."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_slug

    try:
        validate_slug(name)
    except ValidationError as exc:
        raise InvalidSchedule(
            f"{name!r}: a name is letters, digits, hyphens or underscores"
        ) from exc
    if not event_type.strip():
        raise InvalidSchedule("an event type is required (--type)")
    if data is not None and not isinstance(data, dict):
        raise InvalidSchedule("data must be a JSON object")
    parse(cron, tz_name)
    if Schedule.objects.filter(name=name).exists():
        raise InvalidSchedule(f"a schedule named {name!r} already exists")
    return Schedule.objects.create(
        name=name,
        cron=" ".join(cron.split()),
        timezone=tz_name,
        event_type=event_type,
        data=data or {},
        enabled=enabled,
    )


def remove_schedule(*, name: str) -> None:
    deleted, _ = Schedule.objects.filter(name=name).delete()
    if not deleted:
        raise InvalidSchedule(f"no schedule named {name!r}")
