"""Page parameters of the API's list endpoints: a keyset cursor (list what comes before this
id) and a limit, parsed in one place and refused with one RFC 9457 problem when wrong.

The event store (api/event_store.py) parses its own, with an error per parameter, as part of
its query (workflows/event_selectors.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.http import JsonResponse

from workflows.api.problems import problem

MAX_CURSOR = 2**62  # ids are bigints; a larger cursor is a mistake, not a query


class InvalidPage(Exception):
    """A cursor or limit that is not a positive integer (or a limit above the maximum)."""

    def response(self) -> JsonResponse:
        return problem(400, "Invalid query", str(self), kind="invalid-query")


@dataclass(frozen=True)
class Page:
    before: int | None  # list ids below this one; None: from the newest
    limit: int


def _positive(text: Any, default: int | None, *, maximum: int | None) -> int | None:
    if not text:
        return default
    text = str(text)
    if not text.isdigit() or int(text) < 1 or (maximum is not None and int(text) > maximum):
        raise ValueError(text)
    return int(text)


def page_params(
    params: Mapping[str, Any],
    *,
    default: int,
    maximum: int,
    cursor: str = "before_id",
    clamp: bool = False,
) -> Page:
    """The cursor (query parameter `cursor`) and `limit` of one page. A limit above `maximum`
    is refused, or lowered to it with `clamp`. Raises InvalidPage."""
    try:
        before = _positive(params.get(cursor), None, maximum=MAX_CURSOR)
        limit = _positive(params.get("limit"), default, maximum=None if clamp else maximum)
    except ValueError:
        raise InvalidPage(f"{cursor} and limit are positive integers") from None
    return Page(before=before, limit=min(limit or default, maximum))
