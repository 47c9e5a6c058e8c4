"""Rows inserted and updated by statements built once per shape, not by the ORM per call.

A light run's path (the bus consumer starting and finishing it in one transaction, a
worker's light chain) writes the same few statement shapes over and over. Building each
through the ORM took ~0.3 ms, longer than PostgreSQL takes to run it. Here the SQL text
is kept per (model, columns), and only the values are prepared per call, by the fields
themselves (`pre_save`, `get_db_prep_save`). So JSON, datetimes and `auto_now_add` are
stored exactly as `save()` stores them. No model signals are sent (the project has
none).

On PostgreSQL these statements, and the other hand-written ones of the hot paths, go
through `prepared_cursor()`: server-side binding, each statement prepared once per
connection. PostgreSQL then neither parses nor plans them again (0.1-0.2 ms each, for
statements that take 0.05 ms to run). The ORM keeps Django's client-side binding, which
never prepares anything.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence

import psycopg
from django.db import connection
from django.db.backends.postgresql.base import CursorDebugWrapper, ServerBindingCursor
from django.db.backends.utils import CursorWrapper
from django.db.models import Model


@functools.cache
def _insert_sql(model: type[Model], with_pk: bool, rows: int, returning: bool) -> tuple:
    fields = [f for f in model._meta.concrete_fields if with_pk or not f.primary_key]
    quote = connection.ops.quote_name
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} "
        f"({', '.join(quote(f.column) for f in fields)}) VALUES {', '.join([row] * rows)}"
    )
    if returning:
        sql += f" RETURNING {quote(model._meta.pk.column)}"
    return sql, fields


@functools.cache
def _update_sql(model: type[Model], names: tuple[str, ...]) -> tuple:
    fields = [model._meta.get_field(name) for name in names]
    quote = connection.ops.quote_name
    sets = ", ".join(f"{quote(f.column)} = %s" for f in fields)
    sql = (
        f"UPDATE {quote(model._meta.db_table)} SET {sets} WHERE {quote(model._meta.pk.column)} = %s"
    )
    return sql, fields


@functools.cache
def _read_shape(model: type[Model]) -> tuple:
    fields = model._meta.concrete_fields
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    columns = ", ".join(f"{table}.{quote(f.column)}" for f in fields)
    converters = []
    for index, field in enumerate(fields):
        column = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if found:
            converters.append((index, found, column))
    return columns, tuple(f.attname for f in fields), converters


def columns(model: type[Model]) -> str:
    """Every column of `model`, for a hand-written SELECT whose rows `instances` reads."""
    return _read_shape(model)[0]


def instances(model: type[Model], rows) -> list[Model]:
    """The model instances of rows selected with `columns(model)`, each value converted
    from the database as the ORM converts it (JSON decoded, and so on)."""
    _columns, names, converters = _read_shape(model)
    built = []
    for row in rows:
        if converters:
            row = list(row)
            for index, found, column in converters:
                value = row[index]
                for convert in found:
                    value = convert(value, column, connection)
                row[index] = value
        built.append(model.from_db(connection.alias, names, row))
    return built


def insert(objs: Sequence[Model], *, returning_pk: bool = False, cursor=None) -> None:
    """INSERT the unsaved `objs` (all of one model, all with or all without a primary key)
    in one statement. `returning_pk`: one object, which gets the key the database gave
    it; without it the objects keep no key (for rows nobody looks up by key afterwards).
    `cursor`: the caller's (in `pipelined`), else a new one."""
    if not objs:
        return
    model = type(objs[0])
    with_pk = objs[0].pk is not None
    if returning_pk and (len(objs) != 1 or with_pk):
        raise ValueError("returning_pk takes one object without a primary key")
    sql, fields = _insert_sql(model, with_pk, len(objs), returning_pk)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]
    with _cursor(cursor) as cursor:
        if returning_pk and connection.vendor == "postgresql" and not _in_pipeline():
            # Sent in a pipeline of its own and answered after it: the BEGIN psycopg puts
            # before a transaction's first statement then rides in the same round trip.
            with connection.wrap_database_errors, connection.connection.pipeline():
                cursor.execute(sql, params)
        else:
            cursor.execute(sql, params)
        if returning_pk:
            objs[0].pk = cursor.fetchone()[0]
    for obj in objs:
        if obj.pk is not None:
            obj._state.adding, obj._state.db = False, connection.alias


def update(obj: Model, names: Sequence[str], *, cursor=None) -> int:
    """`obj.save(update_fields=names)` as one prepared UPDATE by primary key; the number of
    rows changed (0: no such row, which `save` would raise for; unknown, -1, in
    `pipelined`, where the answer comes later)."""
    sql, fields = _update_sql(type(obj), tuple(names))
    params = [f.get_db_prep_save(f.pre_save(obj, False), connection) for f in fields]
    params.append(obj.pk)
    with _cursor(cursor) as cursor:
        cursor.execute(sql, params)
        return -1 if _in_pipeline() else cursor.rowcount


@contextlib.contextmanager
def pipelined() -> Iterator:
    """A cursor whose statements PostgreSQL receives together (psycopg's pipeline mode):
    they are sent as they come, and the end of the block waits for all their answers at
    once, one round trip instead of one each. Fetch a statement's rows after the block: a
    fetch inside costs a round trip of its own. Inside, no statement's row count is known
    when it is sent. Elsewhere (SQLite), a plain cursor."""
    with prepared_cursor() as cursor:
        if connection.vendor != "postgresql":
            yield cursor
            return
        with connection.wrap_database_errors, connection.connection.pipeline():
            yield cursor


def with_commit(write: Callable):
    """`write(cursor)`'s statements and the COMMIT of the transaction in one round trip
    (PostgreSQL): call it last in the outermost `transaction.atomic()` block. The COMMIT
    ends the transaction here, so the block's own commit finds none open and sends nothing
    (psycopg skips it), then runs the on-commit hooks as usual. A COMMIT that fails (a
    deferred constraint) raises here, inside the block, which rolls back as for any error.
    Anywhere else (SQLite, a savepoint, a transaction the block did not open) the block
    commits as usual, after `write`. Returns what `write` returned (read its statements'
    rows only now, after the answer)."""
    outermost = (
        connection.vendor == "postgresql"
        and len(connection.atomic_blocks) == 1
        and connection.commit_on_exit
        and not connection.savepoint_ids
        and not connection.needs_rollback
    )
    if not outermost:
        with prepared_cursor() as cursor:
            return write(cursor)
    with pipelined() as cursor:
        written = write(cursor)
        cursor.execute("COMMIT")
    return written


def _in_pipeline() -> bool:
    raw = connection.connection
    return raw is not None and getattr(raw, "_pipeline", None) is not None


def _cursor(cursor):
    return contextlib.nullcontext(cursor) if cursor is not None else prepared_cursor()


def prepared_cursor():
    """Django's cursor, on PostgreSQL with server-side binding: each statement is prepared
    on its first run on the connection and reused after (psycopg keeps the 100 last used;
    a rollback or a schema change drops them, and they are prepared again). Use it for
    hand-written statements of a fixed text (`among` passes a list as one parameter).
    With prepared statements turned off in the settings (SIGNALBOX_DB_PREPARED_STATEMENTS,
    for a pooler that does not carry them), and on SQLite, Django's usual cursor."""
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        return connection.cursor()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        prepared = ServerBindingCursor(raw)
    if connection.queries_logged:
        return _LoggedCursor(prepared, connection)
    return connection.make_cursor(prepared)


class _LoggedCursor(CursorDebugWrapper):
    """Django's query log (DEBUG, tests) for `prepared_cursor`: psycopg keeps no text of a
    prepared statement's run, which the log would read, so the text is composed here."""

    def execute(self, sql, params=None):
        with self.debug_sql(_readable(sql, params), params):
            return CursorWrapper.execute(self, sql, params)


def _readable(sql: str, params) -> str:
    try:
        return connection.ops.compose_sql(sql, params)
    except psycopg.DataError:  # as Django's own log does
        return sql
