"""The vocabulary of the schema compatibility checker (compatibility.py): the keywords it
knows, its limits, what it reports, and small pure helpers over schema documents (walking
them, resolving local `$ref`s, reading types and bounds, wording messages).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import jsonschema

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


# --- the checker -------------------------------------------------------------------------

Reason = tuple[str, str]  # (pointer, message)

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
