import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import InterfaceError, OperationalError, connections

from workflows.events.bus import Consumer, Delivery
from workflows.events.bus_leases import PartitionLeases
from workflows.events.connectors.runner import ConnectorSupervisor
from workflows.events.external_streams import StreamIngestThread
from workflows.infra import heartbeat, step_metrics
from workflows.infra.loop import Stopper
from workflows.infra.tracing import delivery_traces
from workflows.runs.execution import Budget
from workflows.runs.matching import (
    Hearing,
    dead_letter_bus_entry,
    flush_published_marks,
    hearing,
    mark_matched,
    match_events,
    published_marks,
)

log = logging.getLogger("signalbox.bus")
# Entries become reclaimable only after BUS_CLAIM_IDLE_MS (30 s by default), and the
# component heartbeat lives 15 s: neither needs a look at every read. Each look costs a
# round trip per partition, which every event arriving alone used to pay.
HOUSEKEEPING_SECONDS = 1.0
# Partitions are matched side by side, each in order on its own thread (and database
# connection): matching waits on the database most of the time, and one partition's
# backlog must not hold the others up. Within a partition order is kept (per-key order).
MAX_MATCH_THREADS = 4


def by_partition(deliveries: list[Delivery]) -> list[list[Delivery]]:
    """The deliveries grouped by stream, each group in the order read."""
    groups: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        groups.setdefault(delivery.stream, []).append(delivery)
    return list(groups.values())


def settle_unheard(
    consumer: Consumer, deliveries: list[Delivery]
) -> tuple[list[Delivery], Hearing | None]:
    """Settle the entries whose event type nobody listens to (no subscribed workflow, no
    waiting run): one query for the whole read, one UPDATE marking them matched, one XACK,
    and no event loaded. Returns the rest, for matching, and what that query found (passed
    on to matching, which then need not ask again). Under steady ingest of types no
    workflow uses, this is most of what the consumer reads."""
    typed = [d for d in deliveries if d.type]
    if not typed:
        return deliveries, None
    # The events themselves come with it: matching them reads nothing more first.
    heard = hearing({d.type for d in typed}, events=[d.event_id for d in typed])
    listened = heard.listened
    unheard = [d for d in typed if d.type not in listened]
    if not unheard:
        return deliveries, heard
    mark_matched(*{d.event_id for d in unheard})  # before the ack, as match_events does
    consumer.ack_many(unheard)
    settled = {(d.stream, d.entry_id) for d in unheard}
    return [d for d in deliveries if (d.stream, d.entry_id) not in settled], heard


def entry_order(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def keep_owned(consumer: Consumer, deliveries: list[Delivery]) -> list[Delivery]:
    """The deliveries of the partitions this consumer still reads: the others' stay
    pending, for the partition's new reader to take over in order."""
    owned = set(consumer.streams)
    return [d for d in deliveries if d.stream in owned]


def housekeep(consumer: Consumer, leases: PartitionLeases, deliveries: list[Delivery]):
    """Beat, renew and rebalance the partition leases, and pick up unacknowledged entries:
    all of a partition just gained (its last reader's), else those idle past
    BUS_CLAIM_IDLE_MS when nothing is carried. Returns the deliveries to handle now."""
    heartbeat.beat("bus-consumer")
    held, gained = leases.refresh()
    if held != consumer.partitions:
        consumer.assign(held)
        deliveries = keep_owned(consumer, deliveries)
    if gained:
        log.info("bus consumer %s now reads partitions %s", consumer.name, sorted(held))
        seen = {(d.stream, d.entry_id) for d in deliveries}
        deliveries += [d for d in consumer.take_over(gained) if (d.stream, d.entry_id) not in seen]
        deliveries.sort(key=lambda d: (d.stream, entry_order(d.entry_id)))
    elif not deliveries:
        deliveries += consumer.reclaim(idle_ms=settings.SIGNALBOX["BUS_CLAIM_IDLE_MS"])
    return deliveries


def handle_in_order(deliveries: list[Delivery], handle: Callable[[list[Delivery]], None]) -> None:
    """One partition's deliveries, handled in the order read."""
    try:
        handle(deliveries)
    except (OperationalError, InterfaceError):
        # This thread's connection is broken: drop it so its next try reconnects.
        connections.close_all()
        raise


def handle_partitions(
    groups: list[list[Delivery]],
    handle: Callable[[list[Delivery]], None],
    pool: ThreadPoolExecutor | None,
) -> None:
    """Handle every partition's deliveries, side by side when there are several; wait for
    all, then raise the first failure (a Redis error first: the consumer reconnects)."""
    if pool is None or len(groups) < 2:
        for group in groups:
            handle_in_order(group, handle)
        return
    futures = [pool.submit(handle_in_order, group, handle) for group in groups]
    errors = [f.exception() for f in futures]
    errors = [e for e in errors if e is not None]
    if errors:
        raise next((e for e in errors if isinstance(e, redis.RedisError)), errors[0])


class Command(BaseCommand):
    help = (
        "Read the event bus as a consumer group member and start the matching runs; "
        "alongside, ingest the configured external Redis streams."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}")
        parser.add_argument(
            "--no-external-streams",
            action="store_true",
            help="do not read the external streams (`manage.py streams`) in this process",
        )
        parser.add_argument(
            "--no-connectors",
            action="store_true",
            help="do not read the broker connections (`manage.py connectors`) in this process",
        )

    def handle(self, *args, name, no_external_streams=False, no_connectors=False, **options):
        stopper = Stopper()
        config = settings.SIGNALBOX
        consumer = None
        leases: PartitionLeases | None = None
        log.info("bus consumer %s starting", name)
        # External streams are read on their own thread: an idle stream then never delays
        # the bus (both block in XREADGROUP), and each side keeps its own DB connection.
        streams = None if no_external_streams else StreamIngestThread(name, stopper)
        if streams is not None:
            streams.start()
        # Broker connections likewise, one thread each (a Redis lease per connection makes
        # one bus consumer its reader at a time; see workflows/events/connectors/runner.py).
        brokers = None if no_connectors else ConnectorSupervisor(name, stopper)
        if brokers is not None:
            brokers.start()
        threads = max(1, min(config["BUS_PARTITIONS"], MAX_MATCH_THREADS))
        pool = ThreadPoolExecutor(threads, "bus-match") if threads > 1 else None
        housekept = 0.0
        # Entries read when the database was away, tried again by this consumer until it is
        # back rather than reclaimed from Redis: each reclaim counts a delivery, and an
        # outage of a few minutes would otherwise dead-letter every entry it held.
        carried: list[Delivery] = []
        while not stopper.stopped:
            deliveries, carried = carried, []
            try:
                if consumer is None:
                    consumer = Consumer(name)
                    consumer.assign(())  # nothing until the leases say which
                    # After a reconnect every partition held counts as gained: its
                    # lease may have lapsed meanwhile, and another consumer read it.
                    leases = PartitionLeases(consumer.redis, name)
                    housekept = 0.0
                # Renewed several times per lease, however short it is configured.
                every = min(HOUSEKEEPING_SECONDS, leases.lease_ms / 4000)
                if time.monotonic() - housekept >= every:
                    deliveries = housekeep(consumer, leases, deliveries)
                    housekept = time.monotonic()
                if not deliveries and not consumer.streams:
                    stopper.wait(every)  # no partition for us (yet)
                    continue
                if not deliveries:
                    # Run events appended and not yet marked published wait for the next
                    # read's UPDATE: not long, lest the outbox relay append them again.
                    marks_waiting = published_marks.waiting
                    block = min(1000, every * 1000, 200 if marks_waiting else 1000)
                    deliveries += consumer.read(block_ms=int(block))
                    if not deliveries and marks_waiting:
                        flush_published_marks()
                deliveries, heard = settle_unheard(consumer, deliveries)
                # Each partition's part of the read at once: a few queries and one XACK,
                # not a round of each per entry; an entry whose matching fails stays
                # pending on its own.
                handle_partitions(
                    by_partition(deliveries),
                    lambda group, consumer=consumer, heard=heard: consumer.handle_batch(
                        group,
                        lambda event_ids: (
                            match_events(
                                event_ids=event_ids,
                                inline=Budget.for_bus_read(),
                                traces=delivery_traces(group),
                                heard=heard,
                            ).done
                        ),
                        max_deliveries=config["BUS_MAX_DELIVERIES"],
                        on_poison=lambda d, reason: dead_letter_bus_entry(
                            event_id=d.event_id,
                            reason=reason,
                            stream=d.stream,
                            entry_id=d.entry_id,
                        ),
                    ),
                    pool,
                )
                step_metrics.flush()  # the light steps this read ran, in one pipeline
                if published_marks.overdue:
                    flush_published_marks()
            except redis.RedisError as exc:
                # Redis restarts must not kill the consumer: reconnect and carry on.
                log.warning("bus unavailable (%s); retrying", exc)
                consumer = None
                stopper.wait(1.0)
            except (OperationalError, InterfaceError) as exc:
                # The entries stay pending, and this consumer tries them again (matching is
                # idempotent). Drop the broken connections so the next try reconnects.
                log.warning("database unavailable (%s); retrying", exc)
                connections.close_all()
                carried = deliveries
                stopper.wait(1.0)
            except Exception:
                # An entry that fails stays pending and is reclaimed later (counted).
                log.exception("error while processing the bus")
                stopper.wait(1.0)
        if pool is not None:
            pool.shutdown(wait=True)
        with contextlib.suppress(Exception):  # else the outbox relay appends them again
            flush_published_marks()
        if leases is not None:
            # Handled entries are acknowledged: the others may take our partitions now.
            with contextlib.suppress(redis.RedisError):
                leases.release()
        if streams is not None:
            streams.join(timeout=35)
        if brokers is not None:
            brokers.join(timeout=35)
        log.info("bus consumer %s stopped", name)
