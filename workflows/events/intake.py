"""Store the events of many API requests in one statement and one commit.

A `Submission` is what one `POST /api/v1/events` asks for once its body parsed: the
envelopes (one, or a batch), the token that sent them, and the channel. `store` writes the
submissions handed to it inside the caller's transaction, with a handful of statements
whatever their number:

- one `SELECT` confirms that the tokens are still unrevoked (a token revoked a moment ago
  is refused at once, although the HTTP layer authenticated it from a cache);
- one `SELECT` finds which of the event types have a registered schema (most have none);
  only those events are checked against it, and a violation refuses its submission alone;
- one `INSERT … ON CONFLICT DO NOTHING RETURNING` stores every new event (a repeat of a
  stored (source, id) is answered with the stored row, as `ingest_event` does);

so the group committer (workflows.events.group_commit) can share one commit between the
requests of a whole web process. Publication to the bus is the caller's, after the commit.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.base import ModelState
from django.utils import timezone

from workflows.access.models import ApiToken
from workflows.core.lineage import correlation_extensions
from workflows.events import bus, stamps
from workflows.events.envelope import Envelope, check_storable
from workflows.events.models import Event, EventType
from workflows.events.schemas import SchemaCheck, SchemaViolation, check_event_data
from workflows.infra import row_sql
from workflows.live import notify

log = logging.getLogger("signalbox.ingest")

# Event columns written at ingest, in the order of the INSERT.
COLUMNS = (
    "source",
    "ce_id",
    "type",
    "subject",
    "specversion",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_is_base64",
    "extensions",
    "correlation_id",
    "causation_id",
    "validation",
    "schema_version",
    "channel",
    "received_at",
)
# Bound parameters per statement stay well under PostgreSQL's 65,535 and SQLite's 32,766.
ROWS_PER_STATEMENT = 1000


class SchemaViolations(Exception):
    """The entries of one submission whose data breaks its type's schema, by index."""

    def __init__(self, found: list[tuple[int, SchemaViolation]]):
        self.found = found
        super().__init__("; ".join(f"[{i}] {v}" for i, v in found))


class TokenRevoked(Exception):
    """The submission's token was revoked after the HTTP layer had authenticated it."""


@dataclass
class Accepted:
    id: int
    source: str
    ce_id: str
    duplicate: bool
    validation: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "ce_id": self.ce_id,
            "duplicate": self.duplicate,
            "validation": self.validation,
        }


@dataclass
class Submission:
    envelopes: Sequence[Envelope]
    token_id: int | None = None
    channel: str = "http"
    # The traceparent of the request's ingest span (tracing on): carried by the bus entries
    # of its events, the parent of their delivery spans (workflows/infra/tracing.py).
    trace: str | None = None
    # Filled by `store`: exactly one of these.
    accepted: list[Accepted] = field(default_factory=list)
    error: Exception | None = None
    # Its rows as written (pk None for a repeat of a stored event).
    rows: list[Event] = field(default_factory=list)


def store(
    submissions: Sequence[Submission],
    *,
    mark_published: Sequence[int] = (),
    in_order: bool = False,
) -> list[Event]:
    """Store every submission that may be stored, in the current transaction; set each
    one's `accepted` or `error` (TokenRevoked, SchemaViolations). Returns the new events,
    in order, to publish once the transaction has committed. `mark_published` names
    events (of earlier groups) now on the bus, marked in the same transaction. `in_order`
    gives the rows ids in the order submitted (a broker connector's per-key order) rather
    than in key order (which keeps concurrent committers of equal keys from deadlocking;
    a single reader per connection has none)."""
    if connection.vendor == "postgresql":
        # The marks are written either way (before the optimistic insert's savepoint).
        if _store_optimistically(submissions, mark_published, in_order):
            return _settle(submissions)
    else:
        bus.mark_published(list(mark_published))
    _refuse_revoked(submissions)
    checks = _schema_checks([s for s in submissions if s.error is None])
    _insert_rows(submissions, checks, in_order)
    return _settle(submissions)


def store_at_once(
    submissions: Sequence[Submission], *, mark_published: Sequence[int] = ()
) -> list[Event] | None:
    """PostgreSQL, called outside any transaction (the group committer): the usual group in
    ONE statement, which is its own transaction and commit: mark the earlier groups' events
    published, and insert the rows only if every token is still unrevoked and no event
    type has a schema. Returns the new events, committed (each submission's `accepted`
    set), or None when it inserted nothing because a token or a schema must be checked:
    then call `store` in a transaction (the marks are written either way).

    One round trip and no BEGIN, SAVEPOINT or COMMIT of its own: what a group costs the
    web process and the database no longer depends on how many statements `store` needs.
    The checks and the insert share the statement's snapshot, as the statements of the
    exact path share their transaction's moment: a token revoked after it is refused from
    the next request on, as before."""
    token_ids = sorted({s.token_id for s in submissions if s.token_id is not None})
    types = sorted({e.type for s in submissions for e in s.envelopes})
    events = sorted(_new_rows(submissions, {}), key=lambda e: (e.source, e.ce_id))
    now = timezone.now()
    for event in events:
        event.received_at = now
    # Not a prepared statement (row_sql.prepared_cursor), although it is the web tier's
    # hottest: prepared, the web tier alone took 18% more events, but with the bus
    # consumers and workers beside it on 2 cores single events fell from 1.35x the
    # baseline to 0.93-1.04x and batches from 12,600 to 2,300-5,600/s, in three runs
    # (bench.ingest, 2026-12-07; cause not found: the generic plan is the custom one).
    with connection.cursor() as cursor:
        cursor.execute(
            _at_once_sql(),
            [now, list(mark_published), token_ids, len(token_ids), types, _recordset(events)],
        )
        found = cursor.fetchall()
    if not found or not found[0][0]:
        for submission in submissions:
            submission.rows = []
        return None
    ids = {(source, ce_id): pk for _ok, pk, source, ce_id in found if pk is not None}
    for event in events:  # in key order: the first of two equal keys is the one inserted
        event.pk = ids.pop((event.source, event.ce_id), None)
    return _settle(submissions)


@functools.cache
def _at_once_sql() -> str:
    # Data-modifying CTEs run whether or not the final SELECT reads them; `ok` is one row,
    # so the LEFT JOIN answers it even when every row was a repeat (nothing inserted).
    return (
        "WITH marked AS ("
        f"UPDATE {_table(Event)} SET published_at = COALESCE(published_at, %s) "
        "WHERE id = ANY(%s::bigint[]) RETURNING 1"
        "), ok AS ("
        f"SELECT (SELECT count(*) FROM {_table(ApiToken)} WHERE id = ANY(%s::bigint[]) "
        "AND revoked_at IS NULL) = %s "
        f"AND NOT EXISTS (SELECT 1 FROM {_table(EventType)} WHERE name = ANY(%s::text[])) AS ok"
        "), inserted AS ("
        f"INSERT INTO {_table(Event)} ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} "
        f"FROM jsonb_to_recordset(%s::jsonb) AS r({_record()}) WHERE (SELECT ok FROM ok) "
        "ON CONFLICT (source, ce_id) DO NOTHING RETURNING id, source, ce_id"
        ") SELECT ok.ok, inserted.id, inserted.source, inserted.ce_id "
        "FROM ok LEFT JOIN inserted ON true"
    )


def _store_optimistically(
    submissions: Sequence[Submission], marks: Sequence[int], in_order: bool = False
) -> bool:
    """The usual case in one round trip (PostgreSQL's pipeline mode): mark, check the
    tokens and the types, and insert as if every token were live and no type had a schema.
    False, with the insert undone, when that was not so; then the exact path runs."""
    token_ids = sorted({s.token_id for s in submissions if s.token_id is not None})
    types = sorted({e.type for s in submissions for e in s.envelopes})
    with connection.cursor() as cursor:
        with connection.connection.pipeline():
            stamps.stamp(published=marks, cursor=cursor)
            cursor.execute("SAVEPOINT sb_intake")
            live_cursor = connection.cursor()
            live_cursor.execute(
                f"SELECT id FROM {_table(ApiToken)} WHERE id = ANY(%s) AND revoked_at IS NULL",
                [token_ids],
            )
            typed_cursor = connection.cursor()
            typed_cursor.execute(f"SELECT 1 FROM {_table(EventType)} WHERE name = ANY(%s)", [types])
            inserted = _insert_rows(submissions, {}, in_order)
            live = {pk for (pk,) in live_cursor.fetchall()}
            typed = typed_cursor.fetchall()
        if not typed and live.issuperset(token_ids):
            return True
        cursor.execute("ROLLBACK TO SAVEPOINT sb_intake")
    for submission in submissions:
        submission.rows = []
    log.debug("optimistic insert of %d event(s) undone: schema or token to check", inserted)
    return False


def _insert_rows(
    submissions: Sequence[Submission], checks: dict[int, SchemaCheck], in_order: bool = False
) -> int:
    events = _new_rows(submissions, checks)
    _insert(events, in_order=in_order)
    return len(events)


def _new_rows(submissions: Sequence[Submission], checks: dict[int, SchemaCheck]) -> list[Event]:
    """Each storable submission's unsaved rows (set as its `rows`), all in order."""
    rows: list[tuple[Submission, Event]] = []
    for submission in submissions:
        if submission.error is None:
            submission.rows = [
                new_event(envelope, checks.get(id(envelope)), submission.channel)
                for envelope in submission.envelopes
            ]
            if submission.trace:
                for event in submission.rows:
                    event._sb_trace = submission.trace  # type: ignore[attr-defined]
            rows.extend((submission, event) for event in submission.rows)
    return [event for _, event in rows]


def _settle(submissions: Sequence[Submission]) -> list[Event]:
    """Each submission's answer, from its rows: new (they got an id), or a repeat."""
    rows = [(s, e) for s in submissions if s.error is None for e in s.rows]
    existing = _existing([event for _, event in rows if event.pk is None])
    created: list[Event] = []
    for submission, event in rows:
        if event.pk is not None:  # inserted: ours
            created.append(event)
            submission.accepted.append(
                Accepted(event.pk, event.source, event.ce_id, False, event.validation)
            )
        else:  # stored before, or by an equal entry earlier in this group
            twin = existing.get((event.source, event.ce_id))
            submission.accepted.append(
                Accepted(twin.pk, twin.source, twin.ce_id, True, twin.validation)
            )
    return created


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _refuse_revoked(submissions: Sequence[Submission]) -> None:
    token_ids = {s.token_id for s in submissions if s.token_id is not None}
    if not token_ids:
        return
    live = set(
        ApiToken.objects.filter(pk__in=token_ids, revoked_at__isnull=True).values_list(
            "pk", flat=True
        )
    )
    for submission in submissions:
        if submission.token_id is not None and submission.token_id not in live:
            submission.error = TokenRevoked()


def _schema_checks(submissions: Sequence[Submission]) -> dict[int, SchemaCheck]:
    """Checks for the envelopes whose type has a schema (keyed by id(envelope)); a
    submission with a violation gets it as its error. Types without one cost nothing."""
    types = {e.type for s in submissions for e in s.envelopes}
    registered = set(EventType.objects.filter(name__in=types).values_list("name", flat=True))
    checks: dict[int, SchemaCheck] = {}
    if not registered:
        return checks
    for submission in submissions:
        found = []
        for index, envelope in enumerate(submission.envelopes):
            if envelope.type not in registered:
                continue
            try:
                checks[id(envelope)] = check_event_data(envelope)
            except SchemaViolation as exc:
                found.append((index, exc))
        if found:  # a batch is refused whole
            submission.error = SchemaViolations(found)
    return checks


def new_event(envelope: Envelope, check: SchemaCheck | None, channel: str) -> Event:
    """The unsaved Event row of an envelope, as every channel stores it."""
    check = check or SchemaCheck("unvalidated")
    # Every event gets a correlation id (its own id starts a new conversation) and a
    # causation id (for an outside event, itself); a malformed traceparent is dropped.
    extensions = correlation_extensions(envelope.extensions, event_id=envelope.id)
    # Built as unpickling builds a model (no __init__): Django's keyword path costs ~20x
    # as much, and a group commit builds one row per event on the committer thread. Every
    # concrete field is set here (a test compares the two ways); Event has no init signals.
    event = Event.__new__(Event)
    event._state = ModelState()
    event.__dict__.update(
        id=None,
        source=envelope.source,
        ce_id=envelope.id,
        type=envelope.type,
        subject=envelope.subject,
        specversion=envelope.specversion,
        time=envelope.time,
        datacontenttype=envelope.datacontenttype,
        dataschema=envelope.dataschema,
        data=envelope.data,
        data_is_base64=envelope.data_is_base64,
        extensions=extensions,
        correlation_id=extensions["correlationid"],
        causation_id=str(extensions["causationid"]),
        validation=check.validation,
        schema_version=check.version,
        channel=channel,
        received_at=None,
        published_at=None,
        matched_at=None,
    )
    return event


def insert_new(events: Sequence[Event]) -> None:
    """INSERT the events in one statement, no savepoint needed: those whose (source, id)
    is already stored are skipped and keep no pk; the others get theirs."""
    _insert(events)


def send_new(events: Sequence[Event]) -> Callable[[], None]:
    """`insert_new` in two halves, for a caller that sends it in a pipeline with other
    statements (infra.row_sql.pipelined): the INSERT goes now, and the function returned,
    called after the pipeline's block, gives the events their ids."""
    return _send(events)


def _insert(events: Sequence[Event], *, in_order: bool = False) -> None:
    """INSERT them, skipping (source, id) pairs already stored, and give each inserted one
    its id. PostgreSQL and SQLite both return only the rows the statement inserted (the
    first of two equal pairs in one statement)."""
    _send(events, in_order=in_order)()


def _send(events: Sequence[Event], *, in_order: bool = False) -> Callable[[], None]:
    now = timezone.now()
    for event in events:
        event.received_at = now
    # In key order: two committers inserting the same keys wait for each other, never
    # deadlock (each would otherwise hold a key the other needs).
    if not in_order:
        events = sorted(events, key=lambda e: (e.source, e.ce_id))
    insert = _insert_recordset if connection.vendor == "postgresql" else _insert_values
    sent = []
    for start in range(0, len(events), ROWS_PER_STATEMENT):
        chunk = events[start : start + ROWS_PER_STATEMENT]
        cursor = row_sql.prepared_cursor()
        insert(cursor, chunk)
        sent.append((cursor, chunk))

    def give_ids() -> None:
        for cursor, chunk in sent:
            with cursor:
                ids = {(source, ce_id): pk for pk, source, ce_id in cursor.fetchall()}
            for event in chunk:
                event.pk = ids.pop((event.source, event.ce_id), None)

    return give_ids


def _insert_values(cursor, events: Sequence[Event]) -> None:
    fields = [Event._meta.get_field(name) for name in COLUMNS]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    values: list[Any] = []
    for event in events:
        values.extend(f.get_db_prep_save(getattr(event, f.attname), connection) for f in fields)
    cursor.execute(
        f"INSERT INTO {_table(Event)} ({columns}) VALUES {', '.join([row] * len(events))} "
        "ON CONFLICT (source, ce_id) DO NOTHING RETURNING id, source, ce_id",
        values,
    )


# PostgreSQL: the rows travel as one JSON document, so the statement text never changes
# (psycopg parses it once) and no value is adapted one by one in Python.
_RECORD_TYPES = {
    "time": "timestamptz",
    "data": "jsonb",
    "data_is_base64": "boolean",
    "extensions": "jsonb",
    "schema_version": "integer",
    "received_at": "timestamptz",
}
_RECORDSET_SQL = (
    "INSERT INTO {table} ({columns}) SELECT {columns} FROM jsonb_to_recordset(%s::jsonb) "
    "AS r({record}) ON CONFLICT (source, ce_id) DO NOTHING RETURNING id, source, ce_id"
)


def _insert_recordset(cursor, events: Sequence[Event]) -> None:
    cursor.execute(_recordset_sql(), [_recordset(events)])


@functools.cache
def _recordset_sql() -> str:  # built once, as _at_once_sql: every group commit sends it
    return _RECORDSET_SQL.format(table=_table(Event), columns=", ".join(COLUMNS), record=_record())


def _record() -> str:
    return ", ".join(f"{name} {_RECORD_TYPES.get(name, 'text')}" for name in COLUMNS)


def _recordset(events: Sequence[Event]) -> str:
    """The rows as the JSON document jsonb_to_recordset reads."""
    rows = [
        {
            "source": e.source,
            "ce_id": e.ce_id,
            "type": e.type,
            "subject": e.subject,
            "specversion": e.specversion,
            "time": e.time.isoformat() if e.time else None,
            "datacontenttype": e.datacontenttype,
            "dataschema": e.dataschema,
            "data": e.data,
            "data_is_base64": e.data_is_base64,
            "extensions": e.extensions,
            "correlation_id": e.correlation_id,
            "causation_id": e.causation_id,
            "validation": e.validation,
            "schema_version": e.schema_version,
            "channel": e.channel,
            "received_at": e.received_at.isoformat(),
        }
        for e in events
    ]
    return _rows_json(rows, events)


def _rows_json(rows: list[dict], events: Sequence[Event]) -> str:
    """The rows as one JSON document. Events parsed from an HTTP body (loads_json) hold
    only what JSON spells, with no NaN or infinity: orjson writes them as json would, in a
    tenth of the time. It refuses integers beyond 64 bits (json keeps them): those, and
    rows built elsewhere (a step's data might hold a NaN that json writes and PostgreSQL
    refuses, where orjson would write null), go through json as before."""
    if all(event.channel == "http" for event in events):
        try:
            return orjson.dumps(rows).decode()
        except TypeError:
            pass
    return json.dumps(rows)


def _existing(events: Sequence[Event]) -> dict[tuple[str, str], Event]:
    if not events:
        return {}
    match = Q()
    for event in events:
        match |= Q(source=event.source, ce_id=event.ce_id)
    found = Event.objects.filter(match).only("pk", "source", "ce_id", "validation")
    return {(e.source, e.ce_id): e for e in found}


def ingest_event(
    *,
    envelope: Envelope,
    channel: str = "http",
    check: SchemaCheck | None = None,
    publish: bool = True,
    off_bus: bool = False,
    trace: str | None = None,
) -> tuple[Event, bool]:
    """Store the event (unique on source + id) and put it on the bus after commit.

    Returns (event, created). A repeat of an accepted event returns the stored one with
    created=False and starts nothing. Raises SchemaViolation when the data breaks its
    type's schema (pass `check` when it was already done), InvalidEvent when an attribute
    is longer than its column or the source is no URI-reference. Once this returns outside a
    transaction the row is committed: if Redis is down the outbox relay delivers it later.
    `off_bus` stores an event that must never reach the bus (a try run's sample: its run is
    started directly, no trigger or waiting run may hear of it), marked delivered so the
    relays leave it alone. `trace` is the traceparent of the ingest span (tracing on),
    carried by the bus entry: the parent of the event's delivery span.
    """
    check_storable(envelope)  # built in code (emit_event) or parsed: the same limits
    event = new_event(envelope, check or check_event_data(envelope), channel)
    if trace:
        event._sb_trace = trace  # type: ignore[attr-defined]  # read by bus._append
    if off_bus:
        event.published_at = event.matched_at = timezone.now()
    # Alone, the INSERT commits by itself (autocommit): no BEGIN and COMMIT round trips on
    # the event's way to the bus, and the hooks below run at once. Inside a caller's
    # transaction, a savepoint keeps a repeat from breaking it.
    alone = not connection.in_atomic_block
    try:
        with contextlib.nullcontext() if alone else transaction.atomic():
            row_sql.insert([event], returning_pk=True)  # as save() inserts, prepared
            if off_bus:
                return event, True
            if publish:  # else the caller publishes after its commit (batches: one trip)
                transaction.on_commit(lambda: bus.publish(event))
            notify.event_ingested(event=event)
    except IntegrityError:
        existing = Event.objects.filter(source=envelope.source, ce_id=envelope.id).first()
        if existing is None:
            raise
        return existing, False
    return event, True
