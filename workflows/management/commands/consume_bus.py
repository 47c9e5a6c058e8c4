import logging
import os
import socket

import redis
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import InterfaceError, OperationalError, connections

from workflows import heartbeat
from workflows.events.bus import Consumer
from workflows.events.external_streams import StreamIngestThread
from workflows.loop import Stopper
from workflows.services.events import dead_letter_bus_entry, match_events

log = logging.getLogger("signalbox.bus")


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

    def handle(self, *args, name, no_external_streams=False, **options):
        stopper = Stopper()
        config = settings.SIGNALBOX
        consumer = None
        log.info("bus consumer %s starting", name)
        # External streams are read on their own thread: an idle stream then never delays
        # the bus (both block in XREADGROUP), and each side keeps its own DB connection.
        streams = None if no_external_streams else StreamIngestThread(name, stopper)
        if streams is not None:
            streams.start()
        while not stopper.stopped:
            try:
                if consumer is None:
                    consumer = Consumer(name)
                heartbeat.beat("bus-consumer")
                deliveries = [
                    *consumer.reclaim(idle_ms=config["BUS_CLAIM_IDLE_MS"]),
                    *consumer.read(block_ms=1000),
                ]
                # The whole read at once: a few queries and one XACK per read, not per
                # entry; an entry whose matching fails stays pending on its own.
                consumer.handle_batch(
                    deliveries,
                    lambda event_ids: match_events(event_ids=event_ids).done,
                    max_deliveries=config["BUS_MAX_DELIVERIES"],
                    on_poison=lambda d, reason: dead_letter_bus_entry(
                        event_id=d.event_id,
                        reason=reason,
                        stream=d.stream,
                        entry_id=d.entry_id,
                    ),
                )
            except redis.RedisError as exc:
                # Redis restarts must not kill the consumer: reconnect and carry on.
                log.warning("bus unavailable (%s); retrying", exc)
                consumer = None
                stopper.wait(1.0)
            except (OperationalError, InterfaceError) as exc:
                # The entry stays pending. Drop the broken connection so the next try
                # reconnects once the database is back.
                log.warning("database unavailable (%s); retrying", exc)
                connections.close_all()
                stopper.wait(1.0)
            except Exception:
                # An entry that fails stays pending and is reclaimed later (counted).
                log.exception("error while processing the bus")
                stopper.wait(1.0)
        if streams is not None:
            streams.join(timeout=35)
        log.info("bus consumer %s stopped", name)
