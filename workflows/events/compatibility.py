"""Schema compatibility: can data valid under one JSON Schema be read with another?

The modes follow the established schema registries (Confluent's JSON Schema rules):

- BACKWARD: consumers using the NEW schema can read data written with the OLD one, so every
  instance valid under the old schema must be valid under the new one.
- FORWARD: consumers using the OLD schema can read data written with the NEW one.
- FULL: both. NONE: no check.

Both directions are one question, asked by `_Checker(writer, reader)`: is every instance the
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

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import unquote

import jsonschema
import referencing.exceptions

BACKWARD, FORWARD, FULL, NONE = "BACKWARD", "FORWARD", "FULL", "NONE"
MODES = (BACKWARD, FORWARD, FULL, NONE)

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# Keywords that can reject an instance: those the draft 2020-12 validator implements (plus
# the ones it reads through a sibling). Everything else (title, default, $defs, x-* ...)
# never rejects anything, so it cannot break compatibility.
CONSTRAINTS = frozenset(jsonschema.Draft202012Validator.VALIDATORS) | {
    "then",
    "else",
    "minContains",
    "maxContains",
}
# Keywords the checker reasons about itself.
ANALYSED = frozenset(
    {
        "type",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "propertyNames",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
    }
)
# Reader keywords that are safe only when the writer has exactly the same value at the same
# place (a shared conjunct cannot reject what the writer accepted). Grouped keywords only
# make sense together.
OPAQUE_GROUPS = (("if", "then", "else"), ("contains", "minContains", "maxContains"))
# These depend on every sibling keyword, so even an unchanged value proves nothing unless the
# whole schema object is unchanged.
SIBLING_DEPENDENT = frozenset({"unevaluatedProperties", "unevaluatedItems"})

JSON_TYPES = ("null", "boolean", "object", "array", "number", "string")
MAX_STEPS = 20_000
MAX_DEPTH = 120
MAX_ENUM_VALUES = 1_000


@dataclass(frozen=True)
class Incompatibility:
    """One reason a new schema breaks the type's compatibility mode."""

    path: str  # JSON pointer (RFC 6901) to the schema keyword concerned
    message: str
    direction: str  # BACKWARD or FORWARD: which half of the mode it breaks

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "direction": self.direction}


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
        found += _Checker(writer=old, reader=new, direction=BACKWARD).run()
    if mode in (FORWARD, FULL):
        found += _Checker(writer=new, reader=old, direction=FORWARD).run()
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


# --- the checker -------------------------------------------------------------------------

Reason = tuple[str, str]  # (pointer, message)


class _Checker:
    def __init__(self, *, writer: Any, reader: Any, direction: str):
        self.w_root, self.r_root = writer, reader
        self.direction = direction
        # Messages describe the change from the old schema to the new one, whichever side
        # is writing: in BACKWARD the old schema writes, in FORWARD the new one does.
        self.w_word, self.r_word = ("old", "new") if direction == BACKWARD else ("new", "old")
        self.steps = self.depth = 0
        self.active: set[tuple[int, int]] = set()
        self.keep: list[Any] = []  # keeps merged nodes alive, so their id()s stay unique
        self.same_defs = _defs(writer) == _defs(reader)
        self._validators: dict[str, Any] = {}
        self._canonical: dict[tuple[int, bool], str] = {}
        self._has_ref: dict[int, bool] = {}

    def run(self) -> list[Incompatibility]:
        try:
            reasons = self.sub(self.w_root, self.r_root, [])
        except _TooComplex:
            reasons = [
                (
                    "",
                    "the schemas are too large or too deeply nested to compare within "
                    "the work limit; this counts as a possible break",
                )
            ]
        return [
            Incompatibility(path, message, self.direction) for path, message in _dedupe(reasons)
        ]

    # helpers ----------------------------------------------------------------------------

    def old_new(self, w_value: Any, r_value: Any) -> tuple[Any, Any]:
        return (w_value, r_value) if self.direction == BACKWARD else (r_value, w_value)

    def change(self, name: str, w_value: Any, r_value: Any, show=None) -> str:
        """'maxLength changed from 10 to 5', 'maxLength added (5)', 'maxLength removed (was 5)'.
        None means absent; values are shown as JSON unless `show` says otherwise."""
        show = show or _show
        old, new = self.old_new(w_value, r_value)
        if old is None:
            return f"{name} added ({show(new)})"
        if new is None:
            return f"{name} removed (was {show(old)})"
        return f"{name} changed from {show(old)} to {show(new)}"

    def rejects(self, what: str) -> str:
        return f"{self.w_word} data may {what}, which the {self.r_word} schema rejects"

    def opaque(self, path: list, keyword: str, w_value: Any, r_value: Any) -> Reason:
        w_value = None if w_value is _MISSING else w_value
        r_value = None if r_value is _MISSING else r_value
        return (
            _pointer([*path, keyword]),
            f"{self.change(keyword, w_value, r_value)}: changes to {keyword} cannot be "
            "checked for compatibility, so this counts as a possible break",
        )

    def same(self, w_value: Any, r_value: Any) -> bool:
        """Equal as JSON, and any $ref inside them resolves to equal targets."""
        if self.canonical(w_value) != self.canonical(r_value):
            return False
        return self.same_defs or not (self.has_ref(w_value) or self.has_ref(r_value))

    def same_node(self, w: Any, r: Any) -> bool:
        """`same`, ignoring keywords that cannot reject anything (title, description ...)."""
        if self.canonical(w, stripped=True) != self.canonical(r, stripped=True):
            return False
        return self.same_defs or not (self.has_ref(w) or self.has_ref(r))

    # Comparisons repeat on the same subschemas (every alternative against every other):
    # remember each node's canonical text by id(). Every cached node is kept alive in
    # self.keep, so no id() is reused by another object while the checker runs.
    def canonical(self, value: Any, *, stripped: bool = False) -> str:
        if not isinstance(value, dict | list):
            return _canonical(_strip(value) if stripped else value)
        key = (id(value), stripped)
        if key not in self._canonical:
            self._canonical[key] = _canonical(_strip(value) if stripped else value)
            self.keep.append(value)
        return self._canonical[key]

    def has_ref(self, value: Any) -> bool:
        if not isinstance(value, dict | list):
            return False
        if id(value) not in self._has_ref:
            self._has_ref[id(value)] = _has_ref(value)
            self.keep.append(value)
        return self._has_ref[id(value)]

    def validator(self, side: str, node: Any):
        if side not in self._validators:
            root = self.w_root if side == "w" else self.r_root
            self._validators[side] = jsonschema.Draft202012Validator(root)
        return self._validators[side].evolve(schema=node)

    def accepts(self, side: str, node: Any, value: Any) -> tuple[bool, Any]:
        """Does `node` accept `value`? Returns (ok, best error or None)."""
        try:
            error = jsonschema.exceptions.best_match(self.validator(side, node).iter_errors(value))
        except (referencing.exceptions.Unresolvable, jsonschema.exceptions.SchemaError):
            return (side == "w"), None  # unknown: assume the writer accepts, the reader rejects
        return error is None, error

    # $ref -------------------------------------------------------------------------------

    def resolve_writer(self, node: Any) -> Any:
        """Inline a writer-side $ref. Extra constraints next to it are merged in loosely,
        which only over-approximates the writer (sound)."""
        for _ in range(50):
            if not isinstance(node, dict) or "$ref" not in node:
                return node
            target = _lookup(self.w_root, node["$ref"])
            rest = {k: v for k, v in node.items() if k != "$ref"}
            if target is _MISSING:
                return rest  # an unresolvable writer constraint may be dropped (sound)
            node = target if not _constraints(rest) else self.merge(rest, target)
        return {}

    # the question -----------------------------------------------------------------------

    def sub(self, w: Any, r: Any, path: list) -> list[Reason]:
        """Reasons the writer schema `w` may accept an instance the reader schema `r` rejects."""
        self.depth += 1
        try:
            return self._sub(w, r, path)
        finally:
            self.depth -= 1

    def _sub(self, w: Any, r: Any, path: list) -> list[Reason]:
        self.steps += 1
        if self.steps > MAX_STEPS or self.depth > MAX_DEPTH:
            raise _TooComplex
        w = self.resolve_writer(w)
        if w is False or r is True:
            return []
        if isinstance(r, dict) and "$ref" in r:
            return self.reader_ref(w, r, path)
        if isinstance(w, dict) and isinstance(r, dict):
            key = (id(w), id(r))
            if key in self.active:
                return []  # recursion: assume the pair holds (instances are finite)
            self.active.add(key)
            try:
                return self.sub_objects(w, r, path)
            finally:
                self.active.discard(key)
        if w is True:
            return self.sub_objects({}, r, path) if isinstance(r, dict) else self.nothing(path)
        if r is False:
            return self.nothing(path)
        return [(_pointer(path), "not a schema; this counts as a possible break")]

    def nothing(self, path: list) -> list[Reason]:
        return [
            (
                _pointer(path),
                f"the {self.r_word} schema accepts nothing here (false), "
                f"the {self.w_word} schema accepts values",
            )
        ]

    def reader_ref(self, w: Any, r: dict, path: list) -> list[Reason]:
        target = _lookup(self.r_root, r["$ref"])
        if target is _MISSING:
            if isinstance(w, dict) and self.same(w.get("$ref"), r["$ref"]):
                return []
            return [
                (
                    _pointer([*path, "$ref"]),
                    f"$ref {r['$ref']!r} does not resolve; this counts as a possible break",
                )
            ]
        rest = {k: v for k, v in r.items() if k != "$ref"}
        reasons = self.sub(w, rest, path) if _constraints(rest) else []
        # Reasons found in the target point at the target (where the keyword really is),
        # saying where it was reached from.
        target_path = _ref_tokens(r["$ref"])
        if target_path is None:
            target_path, via = path, ""
        else:
            via = f" (through the $ref at {_pointer(path)})" if path else ""
        if isinstance(w, dict) and isinstance(target, dict):
            key = (id(w), id(target))
            if key in self.active:
                return reasons
            self.active.add(key)
            try:
                found = self.sub_objects(w, target, target_path)
            finally:
                self.active.discard(key)
        else:
            found = self.sub(w, target, target_path)
        return reasons + [(where, message + via) for where, message in found]

    def sub_objects(self, w: dict, r: dict, path: list) -> list[Reason]:
        if not _constraints(r):
            return []
        if self.same_node(w, r):
            return []
        if "enum" in w or "const" in w:
            return self.writer_values(w, r, path)

        # A writer alternative: each alternative (with the shared keywords) must fit.
        for keyword in ("anyOf", "oneOf"):
            if isinstance(w.get(keyword), list) and not self.same(w[keyword], r.get(keyword)):
                base = {k: v for k, v in w.items() if k != keyword}
                reasons: list[Reason] = []
                for i, branch in enumerate(w[keyword]):
                    merged = self.merge(base, self.resolve_writer(branch))
                    reasons += [
                        (where, f"{keyword} alternative {i} of the {self.w_word} schema: {text}")
                        for where, text in self.sub(merged, r, path)
                    ]
                return reasons
        if isinstance(w.get("allOf"), list) and not self.same(w["allOf"], r.get("allOf")):
            merged: Any = {k: v for k, v in w.items() if k != "allOf"}
            for branch in w["allOf"]:
                merged = self.merge(merged, self.resolve_writer(branch))
            return self.sub(merged, r, path)

        reasons = self.reader_compositions(w, r, path)
        reasons += self.types(w, r, path)
        if "enum" in r or "const" in r:
            reasons += self.reader_values(w, r, path)
        may = _may_be(w)
        if may & {"number", "integer"} and _accepts_type(r, "number"):
            reasons += self.numbers(w, r, path)
        if "string" in may and _accepts_type(r, "string"):
            reasons += self.strings(w, r, path)
        if "array" in may and _accepts_type(r, "array"):
            reasons += self.arrays(w, r, path)
        if "object" in may and _accepts_type(r, "object"):
            reasons += self.objects(w, r, path)
        return reasons

    def merge(self, base: Any, extra: Any) -> Any:
        """A schema accepting at least what both accept together (writer side only)."""
        if extra is True or (isinstance(extra, dict) and not _constraints(extra)):
            return base
        if base is True or (isinstance(base, dict) and not _constraints(base)):
            return extra
        if (
            base is False
            or extra is False
            or not isinstance(base, dict)
            or not isinstance(extra, dict)
        ):
            return False if (base is False or extra is False) else extra
        merged = dict(base)
        for key, value in extra.items():
            if key not in merged:
                merged[key] = value
            elif key == "required" and isinstance(value, list):
                merged[key] = sorted(set(merged[key]) | set(value))
            elif key == "properties" and isinstance(value, dict):
                merged[key] = {**value, **merged[key]}
            elif key == "type":
                mine, theirs = _type_set(base), _type_set(extra)
                if mine is not None and theirs is not None:
                    types = _expand(mine) & _expand(theirs)
                    if not types:
                        return False  # no instance has both types: the writer sends nothing
                    merged[key] = sorted(types)
            # any other clash: keep the base's value (dropping a writer conjunct is sound)
        self.keep.append(merged)
        return merged

    # reader compositions --------------------------------------------------------------

    def reader_compositions(self, w: dict, r: dict, path: list) -> list[Reason]:
        reasons: list[Reason] = []
        if isinstance(r.get("allOf"), list) and not self.same(w.get("allOf"), r["allOf"]):
            for i, branch in enumerate(r["allOf"]):
                reasons += self.sub(w, branch, [*path, "allOf", i])
        if isinstance(r.get("anyOf"), list) and not self.same(w.get("anyOf"), r["anyOf"]):
            reasons += self.reader_any_of(w, r["anyOf"], path)
        if isinstance(r.get("oneOf"), list) and not self.same(w.get("oneOf"), r["oneOf"]):
            reasons += self.reader_one_of(w, r["oneOf"], path)
        if "not" in r and not self.same(w.get("not", _MISSING), r["not"]):
            reasons.append(self.opaque(path, "not", w.get("not", _MISSING), r["not"]))
        for group in OPAQUE_GROUPS:
            r_part = {k: r[k] for k in group if k in r}
            w_part = {k: w[k] for k in group if k in w}
            if r_part and not self.same(w_part, r_part):
                first = next(k for k in group if k in r)
                reasons.append(self.opaque(path, first, w.get(first, _MISSING), r[first]))
        for keyword in SIBLING_DEPENDENT:
            if keyword in r and r[keyword] is not True:
                reasons.append(self.opaque(path, keyword, w.get(keyword, _MISSING), r[keyword]))
        for keyword, value in r.items():
            if (
                keyword not in CONSTRAINTS
                or keyword in ANALYSED
                or keyword in SIBLING_DEPENDENT
                or keyword == "not"
                or any(keyword in g for g in OPAQUE_GROUPS)
            ):
                continue
            if keyword == "dependentSchemas" and isinstance(value, dict):
                theirs = w.get(keyword) if isinstance(w.get(keyword), dict) else {}
                for name, schema in value.items():
                    if not self.same(theirs.get(name, _MISSING), schema):
                        reasons.append(
                            self.opaque([*path, keyword], name, theirs.get(name, _MISSING), schema)
                        )
                continue
            if not self.same(w.get(keyword, _MISSING), value):
                reasons.append(self.opaque(path, keyword, w.get(keyword, _MISSING), value))
        return reasons

    def reader_any_of(self, w: dict, branches: list, path: list) -> list[Reason]:
        # Most evolutions keep most alternatives as they were: look for an identical one first.
        if any(self.same_node(w, b) for b in branches):
            return []
        closest: list[Reason] | None = None
        for i, branch in enumerate(branches):
            attempt = self.sub(w, branch, [*path, "anyOf", i])
            if not attempt:
                return []
            if closest is None or len(attempt) < len(closest):
                closest = attempt
        hint = f" (closest alternative: {closest[0][0]}: {closest[0][1]})" if closest else ""
        return [
            (
                _pointer([*path, "anyOf"]),
                self.rejects("match none of the anyOf alternatives") + hint,
            )
        ]

    def reader_one_of(self, w: dict, branches: list, path: list) -> list[Reason]:
        fits = [i for i, b in enumerate(branches) if not self.sub(w, b, [*path, "oneOf", i])]
        if len(fits) == 1 and all(
            _disjoint(w, self.resolve_reader(b)) for i, b in enumerate(branches) if i != fits[0]
        ):
            return []
        return [
            (
                _pointer([*path, "oneOf"]),
                "oneOf changed: the checker cannot prove that "
                f"{self.w_word} data matches exactly one of the {self.r_word} schema's "
                "alternatives, so this counts as a possible break",
            )
        ]

    def resolve_reader(self, node: Any) -> Any:
        if isinstance(node, dict) and "$ref" in node and len(_constraints(node)) == 1:
            target = _lookup(self.r_root, node["$ref"])
            return node if target is _MISSING else target
        return node

    # values -----------------------------------------------------------------------------

    def writer_values(self, w: dict, r: Any, path: list) -> list[Reason]:
        """The writer allows a finite set of values: check each one against the reader."""
        values = [w["const"]] if "const" in w else list(w.get("enum") or [])
        reasons: list[Reason] = []
        for value in values[:MAX_ENUM_VALUES]:
            if not self.accepts("w", w, value)[0]:
                continue  # the writer's other keywords exclude it anyway
            ok, error = self.accepts("r", r, value)
            if ok:
                continue
            if (
                isinstance(r, dict)
                and isinstance(r.get("enum"), list)
                and not _contains(r["enum"], value)
            ):
                removed = "removed" if self.direction == BACKWARD else "added"
                reasons.append(
                    (
                        _pointer([*path, "enum"]),
                        f"enum value {_show(value)} was {removed}: " + self.rejects("hold it"),
                    )
                )
            elif (
                isinstance(r, dict) and "const" in r and _canonical(r["const"]) != _canonical(value)
            ):
                reasons.append(
                    (
                        _pointer([*path, "const"]),
                        self.change("const", value, r["const"])
                        + ": "
                        + self.rejects(f"hold {_show(value)}"),
                    )
                )
            else:
                where = list(error.relative_schema_path) if error is not None else []
                detail = f": {error.message}" if error is not None else ""
                reasons.append(
                    (
                        _pointer([*path, *where]),
                        f"{_show(value)}, allowed by the {self.w_word} schema, is "
                        f"rejected by the {self.r_word} schema{detail}",
                    )
                )
        return reasons

    def reader_values(self, w: dict, r: dict, path: list) -> list[Reason]:
        """The reader allows a finite set of values; the writer (no enum/const) does not."""
        may = _may_be(w)
        if may <= {"null", "boolean"}:
            candidates = ([None] if "null" in may else []) + (
                [True, False] if "boolean" in may else []
            )
            return self.writer_values({**w, "enum": candidates}, r, path)
        keyword = "const" if "const" in r else "enum"
        allowed = [r["const"]] if keyword == "const" else r["enum"]
        return [
            (
                _pointer([*path, keyword]),
                self.change(keyword, None, r[keyword])
                + ": "
                + self.rejects(f"hold values other than {_show(allowed)}"),
            )
        ]

    def types(self, w: dict, r: dict, path: list) -> list[Reason]:
        r_types = _type_set(r)
        if r_types is None:
            return []
        w_types = _type_set(w)
        uncovered = [
            t
            for t in (sorted(w_types) if w_types is not None else JSON_TYPES)
            if not _accepts_type(r, t)
        ]
        if not uncovered:
            return []
        return [
            (
                _pointer([*path, "type"]),
                self.change("type", _show_types(w_types), _show_types(r_types), str)
                + ": "
                + self.rejects("be " + _or(_article(t) for t in uncovered)),
            )
        ]

    # numbers ----------------------------------------------------------------------------

    def numbers(self, w: dict, r: dict, path: list) -> list[Reason]:
        reasons: list[Reason] = []
        integers = _type_set(w) is not None and _expand(_type_set(w)) <= {"integer"}
        for side in ("lower", "upper"):
            w_bound, r_bound = _bound(w, side, integers), _bound(r, side, integers)
            if r_bound is None or _within(w_bound, r_bound, side):
                continue
            plain_kw = "minimum" if side == "lower" else "maximum"
            keyword = r_bound[2]
            if not (r_bound[1] or (w_bound and w_bound[1])):
                text = self.change(plain_kw, w_bound and w_bound[0], r_bound[0])
            else:
                text = self.change(
                    f"{side} bound", _show_bound(w_bound, side), _show_bound(r_bound, side), str
                )
            beyond = (
                ("<=" if r_bound[1] else "<") if side == "lower" else (">=" if r_bound[1] else ">")
            )
            reasons.append(
                (
                    _pointer([*path, keyword]),
                    text + ": " + self.rejects(f"hold numbers {beyond} {_show(r_bound[0])}"),
                )
            )
        if "multipleOf" in r and _is_number(r["multipleOf"]) and r["multipleOf"] > 0:
            step = Fraction(str(r["multipleOf"]))
            w_step = w.get("multipleOf")
            ok = (
                _is_number(w_step)
                and w_step > 0
                and (Fraction(str(w_step)) / step).denominator == 1
            ) or (integers and (1 / step).denominator == 1)
            if not ok:
                reasons.append(
                    (
                        _pointer([*path, "multipleOf"]),
                        self.change("multipleOf", w_step, r["multipleOf"])
                        + ": "
                        + self.rejects(
                            f"hold numbers that are not multiples of {_show(r['multipleOf'])}"
                        ),
                    )
                )
        return reasons

    # strings ----------------------------------------------------------------------------

    def strings(self, w: dict, r: dict, path: list) -> list[Reason]:
        reasons = self.lengths(w, r, path, "minLength", "maxLength", "strings", "characters")
        if "pattern" in r and w.get("pattern") != r["pattern"]:
            reasons.append(
                (
                    _pointer([*path, "pattern"]),
                    self.change("pattern", w.get("pattern"), r["pattern"])
                    + ": "
                    + self.rejects(f"hold strings that do not match {r['pattern']!r}"),
                )
            )
        # Ingest does not assert formats, but consumers often do: a new or changed format
        # counts as a possible break.
        if "format" in r and w.get("format") != r["format"]:
            reasons.append(
                (
                    _pointer([*path, "format"]),
                    self.change("format", w.get("format"), r["format"])
                    + ": "
                    + self.rejects(
                        f"hold strings that are not {r['format']!r} (where formats are checked)"
                    ),
                )
            )
        return reasons

    def lengths(
        self, w: dict, r: dict, path: list, low: str, high: str, noun: str, unit: str
    ) -> list[Reason]:
        reasons: list[Reason] = []
        w_low, r_low = _int(w.get(low)) or 0, _int(r.get(low)) or 0
        if w_low < r_low:
            reasons.append(
                (
                    _pointer([*path, low]),
                    self.change(low, w.get(low), r.get(low))
                    + ": "
                    + self.rejects(f"hold {noun} with fewer than {r_low} {unit}"),
                )
            )
        w_high, r_high = _int(w.get(high)), _int(r.get(high))
        if r_high is not None and (w_high is None or w_high > r_high):
            reasons.append(
                (
                    _pointer([*path, high]),
                    self.change(high, w.get(high), r.get(high))
                    + ": "
                    + self.rejects(f"hold {noun} with more than {r_high} {unit}"),
                )
            )
        return reasons

    # arrays -----------------------------------------------------------------------------

    def arrays(self, w: dict, r: dict, path: list) -> list[Reason]:
        reasons = self.lengths(w, r, path, "minItems", "maxItems", "arrays", "items")
        if r.get("uniqueItems") is True and w.get("uniqueItems") is not True:
            reasons.append(
                (
                    _pointer([*path, "uniqueItems"]),
                    self.change("uniqueItems", w.get("uniqueItems"), True)
                    + ": "
                    + self.rejects("hold arrays with duplicate items"),
                )
            )
        w_prefix = w.get("prefixItems") if isinstance(w.get("prefixItems"), list) else []
        r_prefix = r.get("prefixItems") if isinstance(r.get("prefixItems"), list) else []
        w_items, r_items = w.get("items", True), r.get("items", True)
        w_max = _int(w.get("maxItems"))
        for i in range(max(len(w_prefix), len(r_prefix))):
            if w_max is not None and i >= w_max:
                return reasons
            w_at = w_prefix[i] if i < len(w_prefix) else w_items
            r_at, where = (
                (r_prefix[i], ["prefixItems", i]) if i < len(r_prefix) else (r_items, ["items"])
            )
            reasons += self.sub(w_at, r_at, [*path, *where])
        if w_max is None or w_max > max(len(w_prefix), len(r_prefix)):
            reasons += self.sub(w_items, r_items, [*path, "items"])
        return reasons

    # objects ----------------------------------------------------------------------------

    def objects(self, w: dict, r: dict, path: list) -> list[Reason]:
        reasons = self.lengths(
            w, r, path, "minProperties", "maxProperties", "objects", "properties"
        )
        w_props = w.get("properties") if isinstance(w.get("properties"), dict) else {}
        r_props = r.get("properties") if isinstance(r.get("properties"), dict) else {}
        w_patterns = (
            w.get("patternProperties") if isinstance(w.get("patternProperties"), dict) else {}
        )
        r_patterns = (
            r.get("patternProperties") if isinstance(r.get("patternProperties"), dict) else {}
        )
        w_extra = w.get("additionalProperties", True)
        r_extra = r.get("additionalProperties", True)

        def writer_schema(name: str) -> Any:
            if name in w_props:
                return w_props[name]
            for pattern, schema in w_patterns.items():
                if _matches(pattern, name):
                    return schema
            return w_extra

        w_required = set(w.get("required") or [])
        for name in r.get("required") or []:
            if name in w_required:
                continue
            if isinstance(r_props.get(name), dict) and "default" in r_props[name]:
                continue  # the reader fills it in from the default (Confluent's rule)
            text = (
                f"property {name!r} became required"
                if self.direction == BACKWARD
                else f"property {name!r} is no longer required"
            )
            reasons.append(
                (
                    _pointer([*path, "required"]),
                    f"{text}: {self.w_word} data may lack it, which the "
                    f"{self.r_word} schema rejects",
                )
            )

        w_dependent = (
            w.get("dependentRequired") if isinstance(w.get("dependentRequired"), dict) else {}
        )
        r_dependent = (
            r.get("dependentRequired") if isinstance(r.get("dependentRequired"), dict) else {}
        )
        for name, needs in r_dependent.items():
            have = set(w_dependent.get(name) or []) | w_required
            missing = [n for n in needs if n not in have]
            if missing and writer_schema(name) is not False:
                reasons.append(
                    (
                        _pointer([*path, "dependentRequired", name]),
                        self.change(f"dependentRequired of {name!r}", w_dependent.get(name), needs)
                        + ": "
                        + self.rejects(f"carry {name!r} without {_or(repr(m) for m in missing)}"),
                    )
                )

        for name in sorted(set(w_props) | set(r_props)):
            reasons += self.property(
                name, writer_schema(name), w_props, r_props, r_patterns, r_extra, path
            )

        for pattern, schema in r_patterns.items():
            if pattern in w_patterns:
                reasons += self.sub(
                    w_patterns[pattern], schema, [*path, "patternProperties", pattern]
                )
                continue
            sources = [w_extra, *w_patterns.values()]
            if any(s is not False and self.sub(s, schema, []) for s in sources):
                verb = "added" if self.direction == BACKWARD else "removed"
                reasons.append(
                    (
                        _pointer([*path, "patternProperties", pattern]),
                        f"patternProperties {pattern!r} {verb}: "
                        + self.rejects(
                            "carry properties matching it with values it does not allow"
                        ),
                    )
                )

        if not _is_true(r_extra):
            reasons += self.extra(w_extra, w_patterns, r_extra, r_patterns, path)

        if "propertyNames" in r and not self.same(
            w.get("propertyNames", _MISSING), r["propertyNames"]
        ):
            reasons += self.property_names(w, r, w_props, w_patterns, w_extra, path)
        return reasons

    def property(
        self,
        name: str,
        w_schema: Any,
        w_props: dict,
        r_props: dict,
        r_patterns: dict,
        r_extra: Any,
        path: list,
    ) -> list[Reason]:
        if w_schema is False:
            return []  # the writer never sends this property
        readers = []
        if name in r_props:
            readers.append((r_props[name], ["properties", name]))
        readers += [
            (s, ["patternProperties", p]) for p, s in r_patterns.items() if _matches(p, name)
        ]
        if not readers:
            readers.append((r_extra, ["additionalProperties"]))
        reasons: list[Reason] = []
        for r_schema, where in readers:
            if name in w_props and where == ["additionalProperties"] and r_schema is False:
                reasons.append(
                    (
                        _pointer([*path, "properties", name]),
                        f"property {name!r} was "
                        + ("removed from" if self.direction == BACKWARD else "added to")
                        + " a closed content model (additionalProperties: false): "
                        + self.rejects("carry it"),
                    )
                )
            elif (
                name not in w_props
                and _is_true(w_schema)
                and where[0] == "properties"
                and self.sub(True, r_schema, [])
            ):
                verb = "added to" if self.direction == BACKWARD else "removed from"
                reasons.append(
                    (
                        _pointer([*path, "properties", name]),
                        f"property {name!r} was {verb} an open content model "
                        f"(additionalProperties not false): {self.w_word} data may "
                        f"carry {name!r} with any value, which the {self.r_word} "
                        f"schema's definition of {name!r} may reject",
                    )
                )
            else:
                reasons += self.sub(w_schema, r_schema, [*path, *where])
        return reasons

    def extra(
        self, w_extra: Any, w_patterns: dict, r_extra: Any, r_patterns: dict, path: list
    ) -> list[Reason]:
        """Properties neither side names: the writer's additionalProperties (and patterns the
        reader does not share) must fit the reader's additionalProperties."""
        reasons: list[Reason] = []
        where = _pointer([*path, "additionalProperties"])
        if _is_true(w_extra):
            if r_extra is False:
                text = (
                    "additionalProperties: false was added (the content model was closed)"
                    if self.direction == BACKWARD
                    else "additionalProperties: false was removed (the content model was opened)"
                )
            else:
                text = (
                    self.change("additionalProperties", None, r_extra)
                    if self.direction == BACKWARD
                    else self.change("additionalProperties", r_extra, None)
                )
            reasons.append(
                (
                    where,
                    f"{text}: {self.w_word} data may carry properties the "
                    f"{self.r_word} schema does not declare, which it rejects",
                )
            )
        elif w_extra is not False:
            reasons += self.sub(w_extra, r_extra, [*path, "additionalProperties"])
        for pattern, schema in w_patterns.items():
            if pattern not in r_patterns and schema is not False and self.sub(schema, r_extra, []):
                reasons.append(
                    (
                        where,
                        f"patternProperties {pattern!r} "
                        f"{'removed' if self.direction == BACKWARD else 'added'}: "
                        + self.rejects(
                            "carry properties matching it, which "
                            "additionalProperties does not allow"
                        ),
                    )
                )
        return reasons

    def property_names(
        self, w: dict, r: dict, w_props: dict, w_patterns: dict, w_extra: Any, path: list
    ) -> list[Reason]:
        where = [*path, "propertyNames"]
        if w_extra is False and not w_patterns:
            bad = [n for n in w_props if not self.accepts("r", r["propertyNames"], n)[0]]
            return [
                (
                    _pointer(where),
                    f"property name {n!r} is not allowed by the "
                    f"{self.r_word} schema's propertyNames",
                )
                for n in bad
            ]
        if "propertyNames" in w:
            return self.sub(w["propertyNames"], r["propertyNames"], where)
        return [self.opaque(path, "propertyNames", _MISSING, r["propertyNames"])]


# --- small pure helpers -------------------------------------------------------------------


class _TooComplex(Exception):
    pass


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _constraints(node: Any) -> set[str]:
    if not isinstance(node, dict):
        return set()
    return {k for k in node if k in CONSTRAINTS}


def _strip(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    return {k: v for k, v in node.items() if k in CONSTRAINTS}


def _is_true(node: Any) -> bool:
    return node is True or (isinstance(node, dict) and not _constraints(node))


def _canonical(value: Any) -> str:
    # JSON equality, not Python's: 1 == True in Python, but not in JSON Schema.
    if value is _MISSING:
        return "\0missing"
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _contains(values: list, value: Any) -> bool:
    wanted = _canonical(value)
    return any(_canonical(v) == wanted for v in values)


def _has_ref(value: Any) -> bool:
    return any(key == "$ref" for _path, key, _v in _walk(value))


def _defs(root: Any) -> str:
    if not isinstance(root, dict):
        return ""
    return _canonical({k: root.get(k) for k in ("$defs", "definitions")})


def _walk(value: Any, path: tuple = ()) -> Iterable[tuple[tuple, str, Any]]:
    """(path of the containing object, key, value) for every key of every nested object."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key, item
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, i))


# Where subschemas sit, by the shape of the keyword's value.
SCHEMA_VALUED = (
    "additionalProperties",
    "items",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
)
SCHEMA_ARRAYS = ("allOf", "anyOf", "oneOf", "prefixItems")
SCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas", "$defs", "definitions")
# Applicators that apply a subschema to the same instance (not to a property or an item).
IN_PLACE = ("not", "if", "then", "else", "allOf", "anyOf", "oneOf", "dependentSchemas")


def _children(node: dict, keywords: Iterable[str]) -> Iterable[tuple[list, Any]]:
    for key in keywords:
        value = node.get(key)
        if key in SCHEMA_ARRAYS and isinstance(value, list):
            yield from (([key, i], item) for i, item in enumerate(value))
        elif key in SCHEMA_MAPS and isinstance(value, dict):
            yield from (([key, name], item) for name, item in value.items())
        elif key in SCHEMA_VALUED and key in node:
            yield [key], value


def _schemas(node: Any, path: tuple = ()) -> Iterable[tuple[tuple, dict]]:
    """(path, subschema) for every object subschema, skipping data (enum, const, default)."""
    if not isinstance(node, dict):
        return
    yield path, node
    for tokens, child in _children(node, (*SCHEMA_VALUED, *SCHEMA_ARRAYS, *SCHEMA_MAPS)):
        yield from _schemas(child, (*path, *tokens))


def _in_place_cycle(root: dict) -> tuple | None:
    """The path of a subschema that reaches itself through $ref and in-place applicators
    only, or None."""
    where = {id(node): path for path, node in _schemas(root)}
    done: set[int] = set()
    for path, start in _schemas(root):
        if id(start) in done:
            continue
        on_path, stack = {id(start)}, [(start, iter(_in_place(root, start)))]
        while stack:
            node, successors = stack[-1]
            following = next(successors, None)
            if following is None:
                stack.pop()
                on_path.discard(id(node))
                done.add(id(node))
            elif id(following) in on_path:
                return where.get(id(following), path)
            elif id(following) not in done:
                on_path.add(id(following))
                stack.append((following, iter(_in_place(root, following))))
    return None


def _in_place(root: dict, node: dict) -> Iterable[dict]:
    target = _lookup(root, node.get("$ref")) if "$ref" in node else _MISSING
    if isinstance(target, dict):
        yield target
    for _tokens, child in _children(node, IN_PLACE):
        if isinstance(child, dict):
            yield child


def _lookup(root: Any, ref: Any) -> Any:
    """Resolve a local reference ('#', '#/$defs/x') in `root`, or return _MISSING."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return _MISSING
    pointer = ref[1:]
    if pointer == "":
        return root
    if not pointer.startswith("/"):
        return _anchor(root, pointer)
    node = root
    for token in pointer[1:].split("/"):
        token = unquote(token).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return _MISSING
    return node


def _ref_tokens(ref: str) -> list[str] | None:
    """The JSON pointer of a local '#/...' reference as tokens; None for anchors."""
    if ref == "#":
        return []
    if not ref.startswith("#/"):
        return None
    return [unquote(t).replace("~1", "/").replace("~0", "~") for t in ref[2:].split("/")]


def _anchor(root: Any, name: str) -> Any:
    for _path, node in _schemas(root):
        if node.get("$anchor") == name:
            return node
    return _MISSING


def _pointer(tokens: Iterable) -> str:
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


def _type_set(node: Any) -> set[str] | None:
    declared = node.get("type") if isinstance(node, dict) else None
    if isinstance(declared, str):
        return {declared}
    if isinstance(declared, list):
        return {t for t in declared if isinstance(t, str)}
    return None


def _expand(types: set[str] | None) -> set[str]:
    """Concrete kinds a type set admits ('number' admits integers too)."""
    if types is None:
        return {*JSON_TYPES, "integer"}
    return types | ({"integer"} if "number" in types else set())


def _may_be(node: dict) -> set[str]:
    return _expand(_type_set(node))


def _accepts_type(node: dict, kind: str) -> bool:
    types = _type_set(node)
    if types is None:
        return True
    return kind in types or (kind == "integer" and "number" in types)


def _disjoint(w: Any, r: Any) -> bool:
    """Can no instance satisfy both? Only proven through types (the common nullable oneOf)."""
    if r is False:
        return True
    if not isinstance(w, dict) or not isinstance(r, dict):
        return False
    w_types, r_types = _type_set(w), _type_set(r)
    if w_types is None or r_types is None:
        return False
    return not (_expand(w_types) & _expand(r_types))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> int | None:
    return int(value) if _is_number(value) else None


def _bound(node: dict, side: str, integers: bool) -> tuple[Any, bool, str] | None:
    """The effective (value, exclusive, keyword) lower or upper bound, if any. For integer-only
    data an exclusive or fractional bound becomes the inclusive integer bound."""
    plain, strict = (
        ("minimum", "exclusiveMinimum") if side == "lower" else ("maximum", "exclusiveMaximum")
    )
    found = [(node[plain], False, plain)] if _is_number(node.get(plain)) else []
    if _is_number(node.get(strict)):
        found.append((node[strict], True, strict))
    if not found:
        return None
    if integers:
        if side == "lower":
            found = [(math.floor(v) + 1 if x else math.ceil(v), False, k) for v, x, k in found]
        else:
            found = [(math.ceil(v) - 1 if x else math.floor(v), False, k) for v, x, k in found]
    pick = max if side == "lower" else min
    value = pick(v for v, _x, _k in found)
    at_value = [b for b in found if b[0] == value]
    return next((b for b in at_value if b[1]), at_value[0])


def _within(w_bound, r_bound, side: str) -> bool:
    if r_bound is None:
        return True
    if w_bound is None:
        return False
    (wv, wx, _), (rv, rx, _) = w_bound, r_bound
    tighter = wv > rv if side == "lower" else wv < rv
    return tighter or (wv == rv and (wx or not rx))


def _show_bound(bound, side: str) -> str | None:
    if bound is None:
        return None
    value, exclusive, _keyword = bound
    sign = (">" if exclusive else ">=") if side == "lower" else ("<" if exclusive else "<=")
    return f"{sign} {_show(value)}"


def _matches(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return True  # cannot tell: assume it applies (the stricter reading)


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _show_types(types: set[str] | None) -> str | None:
    return None if types is None else "|".join(sorted(types))


def _article(kind: str) -> str:
    return {
        "null": "null",
        "array": "an array",
        "object": "an object",
        "integer": "an integer",
    }.get(kind, f"a {kind}")


def _or(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _dedupe(reasons: list[Reason]) -> list[Reason]:
    seen, unique = set(), []
    for reason in reasons:
        if reason not in seen:
            seen.add(reason)
            unique.append(reason)
    return unique
