"""Schema compatibility: can data valid under one JSON Schema be read with another?

The modes follow the established schema registries (Confluent's JSON Schema rules):

- BACKWARD: consumers using the NEW schema can read data written with the OLD one, so every
  instance valid under the old schema must be valid under the new one.
- FORWARD: consumers using the OLD schema can read data written with the NEW one.
- FULL: both. NONE: no check.

Both directions are one question, asked by `Checker(writer, reader)`: is every instance the
writer schema accepts also accepted by the reader schema? Proving that is undecidable for JSON
Schema in general (regular expressions, `not`, `oneOf`), so the checker is deliberately sound
and incomplete: a change it cannot prove safe is reported as a possible break with the reason,
never passed in silence. Two techniques keep it sound:

- the writer side may be over-approximated (dropping a writer constraint only makes it accept
  more), so writer keywords the checker does not model are ignored;
- the reader side is never weakened: a reader keyword the checker does not model must appear
  unchanged on the writer side at the same place, or it is reported.

Pure Python on purpose (no Django): the registry service and the tests import it directly.
"""

from __future__ import annotations

from typing import Any

import jsonschema

from workflows.events.compatibility_checker import Checker
from workflows.events.schema_nodes import (
    _MISSING,
    BACKWARD,
    DRAFT_2020_12,
    FORWARD,
    FULL,
    MODES,
    NONE,
    Incompatibility,
    _in_place_cycle,
    _lookup,
    _pointer,
    _schemas,
)

# Re-exported: callers import the modes and what a check reports from here.
__all__ = [
    "BACKWARD",
    "DRAFT_2020_12",
    "FORWARD",
    "FULL",
    "MODES",
    "NONE",
    "Incompatibility",
    "InvalidSchema",
    "check_compatibility",
    "check_schema",
    "schema_problems",
]


class InvalidSchema(ValueError):
    """The submitted document is not a usable JSON Schema. `errors`: [{path, message}]."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['path'] or '(root)'}: {e['message']}" for e in errors))


def check_compatibility(old: Any, new: Any, mode: str) -> list[Incompatibility]:
    """Every reason `new` may not replace `old` under `mode`; empty when it may."""
    mode = str(mode).upper()
    if mode not in MODES:
        raise ValueError(f"compatibility must be one of {', '.join(MODES)}, not {mode!r}")
    found: list[Incompatibility] = []
    if mode in (BACKWARD, FULL):
        found += Checker(writer=old, reader=new, direction=BACKWARD).run()
    if mode in (FORWARD, FULL):
        found += Checker(writer=new, reader=old, direction=FORWARD).run()
    return found


def schema_problems(schema: Any) -> list[dict[str, str]]:
    """Why `schema` cannot be registered: not an object, not draft 2020-12, fails the
    meta-schema, or has a `$ref` that cannot be resolved inside the document (ingest validates
    without network access, so a remote reference would fail on every event)."""
    if not isinstance(schema, dict):
        return [{"path": "", "message": "a schema must be a JSON object"}]
    declared = schema.get("$schema")
    if declared is not None and str(declared).rstrip("#") != DRAFT_2020_12:
        return [
            {
                "path": "/$schema",
                "message": f"only JSON Schema draft 2020-12 ({DRAFT_2020_12}) is supported",
            }
        ]
    meta = jsonschema.Draft202012Validator(
        jsonschema.Draft202012Validator.META_SCHEMA,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    problems = [
        {"path": _pointer(err.absolute_path), "message": err.message}
        for err in sorted(meta.iter_errors(schema), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if problems:
        return problems[:50]
    if any("$id" in node for path, node in _schemas(schema) if path):
        return []  # nested $id changes the base URI; leave reference checks to the validator
    for path, node in _schemas(schema):
        value = node.get("$ref")
        if not isinstance(value, str):
            continue
        where = _pointer([*path, "$ref"])
        if not value.startswith("#"):
            problems.append(
                {
                    "path": where,
                    "message": f"$ref {value!r} points outside the "
                    "schema; only local references (#/$defs/...) are supported",
                }
            )
        elif _lookup(schema, value) is _MISSING:
            problems.append({"path": where, "message": f"$ref {value!r} does not resolve"})
    if problems:
        return problems
    looping = _in_place_cycle(schema)
    if looping is not None:
        # e.g. {"$defs": {"a": {"$ref": "#/$defs/a"}}}: validation would recurse forever.
        return [
            {
                "path": _pointer(looping),
                "message": "this schema refers back to itself "
                "without descending into the data ($ref, allOf, anyOf, oneOf, not, if/then/"
                "else), so no instance could ever be validated against it",
            }
        ]
    return []


def check_schema(schema: Any) -> None:
    """Raise InvalidSchema unless `schema` can be registered."""
    problems = schema_problems(schema)
    if problems:
        raise InvalidSchema(problems)
