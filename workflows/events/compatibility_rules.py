"""The per-keyword rules of the schema compatibility checker: types, numbers, strings,
lengths, arrays and objects. Mixed into `compatibility_checker.Checker`, whose walk calls
them with the writer (`w`) and reader (`r`) nodes at the same place; each returns the
reasons the reader may reject something the writer accepts.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from workflows.events.schema_nodes import (
    _MISSING,
    BACKWARD,
    JSON_TYPES,
    Reason,
    _accepts_type,
    _article,
    _bound,
    _expand,
    _int,
    _is_number,
    _is_true,
    _matches,
    _or,
    _pointer,
    _show,
    _show_bound,
    _show_types,
    _type_set,
    _within,
)


class KeywordRules:
    """The keyword rules of `Checker` (see compatibility_checker.py for the walk)."""

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
