"""The walk of the schema compatibility checker: does every instance the writer schema
accepts also pass the reader schema? Follows both documents together (references,
compositions, `enum`/`const` values), sound and incomplete as compatibility.py explains;
the keyword rules it applies at each place are in compatibility_rules.py.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import referencing.exceptions

from workflows.events.compatibility_rules import KeywordRules
from workflows.events.schema_nodes import (
    _MISSING,
    ANALYSED,
    BACKWARD,
    CONSTRAINTS,
    MAX_DEPTH,
    MAX_ENUM_VALUES,
    MAX_STEPS,
    OPAQUE_GROUPS,
    SIBLING_DEPENDENT,
    Incompatibility,
    Reason,
    _accepts_type,
    _canonical,
    _constraints,
    _contains,
    _dedupe,
    _defs,
    _disjoint,
    _expand,
    _has_ref,
    _lookup,
    _may_be,
    _pointer,
    _ref_tokens,
    _show,
    _strip,
    _TooComplex,
    _type_set,
)


class Checker(KeywordRules):
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
