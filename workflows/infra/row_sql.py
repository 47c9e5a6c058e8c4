"""Rows inserted and updated by statements built once per shape, not by the ORM per call.

A light run's path (the bus consumer starting and finishing it in one transaction, a
worker's light chain) writes the same few statement shapes over and over. Building each
through the ORM took ~0.3 ms, longer than PostgreSQL takes to run it. Here the SQL text
is kept per (model, columns), and only the values are prepared per call, by the fields
themselves (`pre_save`, `get_db_prep_save`). So JSON, datetimes and `auto_now_add` are
stored exactly as `save()` stores them. No model signals are sent (the project has
none).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from django.db import connection
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


def insert(objs: Sequence[Model], *, returning_pk: bool = False) -> None:
    """INSERT the unsaved `objs` (all of one model, all with or all without a primary key)
    in one statement. `returning_pk`: one object, which gets the key the database gave
    it; without it the objects keep no key (for rows nobody looks up by key afterwards)."""
    if not objs:
        return
    model = type(objs[0])
    with_pk = objs[0].pk is not None
    if returning_pk and (len(objs) != 1 or with_pk):
        raise ValueError("returning_pk takes one object without a primary key")
    sql, fields = _insert_sql(model, with_pk, len(objs), returning_pk)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returning_pk:
            objs[0].pk = cursor.fetchone()[0]
    for obj in objs:
        if obj.pk is not None:
            obj._state.adding, obj._state.db = False, connection.alias


def update(obj: Model, names: Sequence[str]) -> int:
    """`obj.save(update_fields=names)` as one prepared UPDATE by primary key; the number of
    rows changed (0: no such row, which `save` would raise for)."""
    sql, fields = _update_sql(type(obj), tuple(names))
    params = [f.get_db_prep_save(f.pre_save(obj, False), connection) for f in fields]
    params.append(obj.pk)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
