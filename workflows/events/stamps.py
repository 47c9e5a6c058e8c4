"""Stamp stored events matched and published, by id, in one UPDATE that keeps the first stamp.

The bus consumer does this for every read (the events it matched, and the run events it
appended on the read before), the group commit for the previous group's events, and
the workers for the run events they append. Built
through the ORM, the CASE expressions took longer to compile than the UPDATE takes to run
(an eighth of the consumer's time under steady load); here the statement is written out.
COALESCE rather than `IS NULL` in the WHERE clause: see bus.mark_published.
"""

from __future__ import annotations

from collections.abc import Collection

from django.db import connection
from django.utils import timezone

from workflows.events.models import Event
from workflows.infra.sql_lists import among


def stamp(*, matched: Collection[int] = (), published: Collection[int] = (), cursor=None) -> None:
    """Set `matched_at` of the events `matched` and `published_at` of those `published`,
    where not set already, to now. `cursor`: the caller's own (the group commit's, in
    PostgreSQL's pipeline mode), else a new one."""
    matched, published = list(dict.fromkeys(matched)), list(dict.fromkeys(published))
    if not matched and not published:
        return
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    quote = connection.ops.quote_name
    params: list = []
    changes = []
    for column, ids in (("matched_at", matched), ("published_at", published)):
        if not ids:
            continue
        name = quote(column)
        if matched and published:  # each column only for its own ids
            changes.append(
                f"{name} = CASE WHEN {quote('id')} {among(ids, params)} "
                f"THEN COALESCE({name}, %s) ELSE {name} END"
            )
        else:
            changes.append(f"{name} = COALESCE({name}, %s)")
        params.append(now)
    where = among([*matched, *published], params)
    table = quote(Event._meta.db_table)
    sql = f"UPDATE {table} SET {', '.join(changes)} WHERE {quote('id')} {where}"
    if cursor is not None:
        cursor.execute(sql, params)
        return
    # Not a prepared statement (row_sql.prepared_cursor), unlike the caller's pipelined
    # cursors: prepared, the producer's mark of each event it published slowed as the
    # table grew (the growth benchmark's ingest fell from 394 to 147 events/s over 15
    # rounds, some marks taking 30-65 ms; the plans were the same index scan). Unprepared,
    # it stayed at 365-411/s.
    with connection.cursor() as own:
        own.execute(sql, params)
