"""Reading request bodies within a size limit, before anything parses them."""

from __future__ import annotations

from typing import Any

from workflows.events.envelope import UNSTORABLE

UNSTORABLE_TEXT = "text cannot contain NUL characters or unpaired surrogates"


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"body larger than {limit} bytes")


def read_limited(request, limit: int) -> bytes:
    """Return the body, or raise BodyTooLarge. A missing or understated Content-Length does
    not help: we read at most limit + 1 bytes and count them."""
    declared = request.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    body = request.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(limit)
    return body


def media_type(request) -> str:
    return request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def storable(value: Any) -> bool:
    """Whether PostgreSQL can store every string of a decoded JSON body (keys included): JSON
    can spell NUL (\\u0000) and unpaired surrogates, which text and jsonb columns refuse."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if UNSTORABLE.search(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True
