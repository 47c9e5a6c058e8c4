"""The connector registry: one module per broker kind, registered by name."""

from __future__ import annotations

import importlib

from .base import Connector

_KINDS: dict[str, type[Connector]] = {}

# Each module registers its kind on import; a new broker starts as a copy of a sibling.
BUILTIN_MODULES = ("amqp", "nats_jetstream", "mqtt")


def register(kind_class: type[Connector]) -> type[Connector]:
    if kind_class.kind in _KINDS:
        raise ValueError(f"connector kind {kind_class.kind!r} is registered twice")
    _KINDS[kind_class.kind] = kind_class
    return kind_class


def all_kinds() -> dict[str, type[Connector]]:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return dict(_KINDS)


def get(kind: str) -> type[Connector]:
    return all_kinds()[kind]
