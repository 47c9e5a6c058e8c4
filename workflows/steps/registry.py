"""The step registry: one module per kind, registered by name."""

from __future__ import annotations

import importlib

from workflows.steps.base import StepKind

_KINDS: dict[str, StepKind] = {}

# Each module registers its kind on import; a new kind starts as a copy of a sibling.
BUILTIN_MODULES = (
    "log",
    "http_request",
    "transform",
    "emit_event",
    "send_email",
    "fail",
    "python",
    "control",
    "waiting",
    "for_each",
    "publish",
)


def register(kind_class: type[StepKind]) -> type[StepKind]:
    if kind_class.name in _KINDS:
        raise ValueError(f"step kind {kind_class.name!r} is registered twice")
    _KINDS[kind_class.name] = kind_class()
    return kind_class


_builtins_imported = False


def _import_builtins() -> None:
    # Every built-in module, not just "any": a caller that imported one kind's module
    # directly (a test, a plugin) must not hide the others. Once per process: the engine
    # looks kinds up for every step it runs.
    global _builtins_imported
    if not _builtins_imported:
        for module in BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{module}")
        _builtins_imported = True


def all_kinds() -> dict[str, StepKind]:
    _import_builtins()
    return dict(_KINDS)


def get(name: str) -> StepKind:
    _import_builtins()
    return _KINDS[name]


def find(name: str) -> StepKind | None:
    """The kind called `name`, or None."""
    _import_builtins()
    return _KINDS.get(name)
