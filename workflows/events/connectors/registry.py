"""The connector registry: one module per broker kind, registered by name. A module
registers its source (`register`) and its sink (`register_sink`) under the same kind."""

from __future__ import annotations

import importlib

from workflows.events.connectors.base import Connector
from workflows.events.connectors.sink import Sink

_KINDS: dict[str, type[Connector]] = {}
_SINKS: dict[str, type[Sink]] = {}

# Each module registers its kind on import; a new broker starts as a copy of a sibling.
BUILTIN_MODULES = ("amqp", "nats_jetstream", "mqtt", "kafka")


def register(kind_class: type[Connector]) -> type[Connector]:
    if kind_class.kind in _KINDS:
        raise ValueError(f"connector kind {kind_class.kind!r} is registered twice")
    _KINDS[kind_class.kind] = kind_class
    return kind_class


def register_sink(sink_class: type[Sink]) -> type[Sink]:
    if sink_class.kind in _SINKS:
        raise ValueError(f"sink kind {sink_class.kind!r} is registered twice")
    _SINKS[sink_class.kind] = sink_class
    return sink_class


def _load() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def all_kinds() -> dict[str, type[Connector]]:
    _load()
    return dict(_KINDS)


def get(kind: str) -> type[Connector]:
    return all_kinds()[kind]


def all_sinks() -> dict[str, type[Sink]]:
    _load()
    return dict(_SINKS)


def get_sink(kind: str) -> type[Sink]:
    return all_sinks()[kind]
