import json
import os
import sys

import redis
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, connection

from workflows.events import bus
from workflows.events.models import Event
from workflows.infra.loop import Stopper
from workflows.queries.events import event_as_json

BLOCK_MS = 1000  # how long one XREAD waits; also the longest delay before a stop is seen


def entry_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def utc(value) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Command(BaseCommand):
    help = (
        "Follow the event bus live, one line per event. Reads the partitions with plain "
        "XREAD, outside the consumer group, so it never takes entries from the bus consumer."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--type",
            dest="types",
            action="append",
            default=[],
            metavar="TYPE",
            help="only events of this type (repeatable)",
        )
        parser.add_argument(
            "--from-start",
            action="store_true",
            help="begin with the oldest entries the streams still hold "
            "(see BUS_RETENTION) instead of new ones",
        )
        parser.add_argument(
            "--count", type=int, default=None, metavar="N", help="exit after printing N events"
        )
        parser.add_argument(
            "--json",
            dest="as_json",
            action="store_true",
            help="print each event as one JSON object (as the API shows it)",
        )

    def handle(self, *args, types, from_start, count, as_json, **options):
        self.as_json = as_json
        stopper = Stopper()
        streams = [bus.stream_key(p) for p in range(bus.partitions())]
        positions: dict[str, str] | None = None
        conn: redis.Redis | None = None
        printed = 0
        while not stopper.stopped and (count is None or printed < count):
            try:
                if conn is None:
                    # The socket timeout must outlast the blocking XREAD.
                    conn = redis.Redis.from_url(
                        settings.REDIS_URL,
                        socket_timeout=BLOCK_MS / 1000 + 10,
                        socket_connect_timeout=2,
                        decode_responses=True,
                    )
                if positions is None:
                    positions = self.start_positions(conn, streams, from_start=from_start)
                    where = "from the oldest retained entry" if from_start else "for new events"
                    self.stderr.write(
                        f"tailing {len(streams)} bus partitions {where}; Ctrl-C stops"
                    )
                    self.stderr.flush()
                reply = conn.xread(positions, count=100, block=BLOCK_MS)
            except redis.RedisError as exc:
                self.stderr.write(f"bus unavailable ({exc}); retrying")
                conn = None
                stopper.wait(1.0)
                continue

            entries = [
                (stream, entry_id, fields)
                for stream, items in reply or []
                for entry_id, fields in items
            ]
            # Partitions interleave; entry ids are times, so sorting gives arrival order.
            entries.sort(key=lambda entry: entry_order(entry[1]))
            wanted = [e for e in entries if not types or e[2].get("type") in types]
            try:
                stored = Event.objects.in_bulk([int(e[2].get("event") or 0) for e in wanted])
            except DatabaseError as exc:
                # Positions stay put: the same entries are read again once the database is back.
                self.stderr.write(f"database unavailable ({exc}); retrying")
                connection.close()
                stopper.wait(1.0)
                continue
            for stream, entry_id, fields in entries:
                positions[stream] = entry_id
                if types and fields.get("type") not in types:
                    continue
                if count is not None and printed >= count:
                    break
                event = stored.get(int(fields.get("event") or 0))
                if not self.emit_line(self.describe(entry_id, fields, event)):
                    return
                printed += 1

    @staticmethod
    def start_positions(conn: redis.Redis, streams: list[str], *, from_start: bool):
        """The last entry id of each stream now, so nothing arriving later is missed (passing
        "$" on every read would skip entries added between two reads)."""
        if from_start:
            return dict.fromkeys(streams, "0-0")
        positions = {}
        for stream in streams:
            last = conn.xrevrange(stream, count=1)
            positions[stream] = last[0][0] if last else "0-0"
        return positions

    def describe(self, entry_id: str, fields: dict, event: Event | None) -> str:
        if event is None:
            return (
                f"{entry_id} {fields.get('type', '?')} event={fields.get('event')} "
                "(not in the event store)"
            )
        if self.as_json:
            return json.dumps(event_as_json(event), ensure_ascii=False, default=str)
        return (
            f"{utc(event.received_at)} {event.type} {event.source} "
            f"subject={event.subject or '-'} id={event.ce_id} "
            f"correlation={event.correlation_id or '-'} event={event.pk}"
        )

    def emit_line(self, line: str) -> bool:
        """Write one line now (not when a buffer fills). False when the reader went away,
        e.g. `tail | head -3`."""
        try:
            self.stdout.write(line)
            self.stdout.flush()
        except BrokenPipeError:
            # Point stdout at /dev/null so the interpreter's final flush does not fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return False
        return True
