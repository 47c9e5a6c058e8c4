"""The push formats by name (`plain` is the webhook's own reader, services/webhooks.py)."""

from __future__ import annotations

from types import ModuleType

from workflows.events.push_formats import eventbridge, eventgrid, pubsub, sns

PLAIN = "plain"
FORMATS: dict[str, ModuleType] = {m.name: m for m in (sns, eventbridge, eventgrid, pubsub)}
NAMES = (PLAIN, *FORMATS)


def get_format(name: str) -> ModuleType | None:
    """The format module, or None for `plain`. Raises KeyError for an unknown name."""
    if name == PLAIN:
        return None
    return FORMATS[name]
