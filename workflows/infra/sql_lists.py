"""A list of values in hand-written SQL, as each backend takes it best."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection


def among(values: Sequence, params: list) -> str:
    """The condition text after a column, `= ANY(%s)` or `IN (%s, …)`, its parameters
    appended to `params`. PostgreSQL takes the list as one array parameter (one statement
    text for any number of values); SQLite gets a placeholder per value."""
    if connection.vendor == "postgresql":
        params.append(list(values))
        return "= ANY(%s)"
    params.extend(values)
    return f"IN ({', '.join(['%s'] * len(values))})"
