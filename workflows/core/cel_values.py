"""Plain JSON to CEL values and back, with the limits the database and CEL share.

Into CEL: a value CEL cannot hold (an integer beyond 64 bits, a non-finite number, nesting
deeper than MAX_DEPTH, a type JSON does not have) becomes an *error value* at its place
rather than failing the conversion: an expression that never reads it is unaffected, one
that does fails with a message naming the path. Event data is not ours to refuse.

Out of CEL: only JSON's own types, finite numbers and at most `limit` bytes of JSON, counted
while converting so that a result of many references to one large string (cheap to build)
is stopped before it is ever written out in full.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from celpy import celtypes
from celpy.evaluation import CELEvalError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
MAX_DEPTH = 64
# PostgreSQL's jsonb stores neither NUL characters nor unpaired surrogates (and JSON text
# with a lone surrogate is not UTF-8).
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")


class ValueTooLarge(Exception):
    """A result is bigger than the limit it is converted under."""


class NotStorable(Exception):
    """A result holds a value JSON (and PostgreSQL's jsonb) cannot store."""


def kind(value: Any) -> str:
    """A value's CEL type name, for messages ("strings have no field …")."""
    if value is None or isinstance(value, celtypes.NullType):
        return "null"
    if isinstance(value, (celtypes.BoolType, bool)):
        return "bool"
    if isinstance(value, celtypes.UintType):
        return "uint"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, (celtypes.TimestampType, datetime)):
        return "timestamp"
    if isinstance(value, (celtypes.DurationType, timedelta)):
        return "duration"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, type):
        return "type"
    if isinstance(value, CELEvalError):
        return "error"
    return "unknown value"


def json_kind(value: Any) -> str:
    """A plain JSON value's kind for messages: null, bool, number, string, list or map."""
    name = kind(value)
    return {"int": "a number", "double": "a number", "uint": "a number", "null": "null"}.get(
        name, f"a {name}"
    )


def plural(value: Any) -> str:
    name = kind(value)
    return {"null": "null values", "bytes": "bytes values", "unknown value": "values"}.get(
        name, name + "s"
    )


def _bad(path: tuple | None, what: str) -> CELEvalError:
    # `path` is a linked list (parent, key), built cheaply while converting and spelled
    # out only here, when a value is refused.
    parts: list[str] = []
    while path is not None:
        path, key = path
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif key.isidentifier():
            parts.append(f".{key}")
        else:
            parts.append(f"[{key!r}]")
    where = "".join(reversed(parts)).lstrip(".") or "the value"
    if len(where) > 120:
        where = where[:40] + "…" + where[-80:]
    exc = CELEvalError(f"{where}: {what}")
    exc.friendly = True  # type: ignore[attr-defined] - our words, shown as they are
    return exc


def to_cel(value: Any, root: str = "") -> Any:
    """A JSON value (from an event, a step output, vars) as CEL values; never raises."""
    return _to_cel(value, (None, root) if root else None, 0)


_String, _Int, _Double, _Bool = (
    celtypes.StringType,
    celtypes.IntType,
    celtypes.DoubleType,
    celtypes.BoolType,
)


def _to_cel(value: Any, path: tuple | None, depth: int) -> Any:
    kind_of = type(value)
    if kind_of is str:
        return _String(value)
    if kind_of is bool:  # before int: True is an int to Python
        return _Bool(value)
    if kind_of is int:
        if INT64_MIN <= value <= INT64_MAX:
            return _Int(value)
        return _bad(path, "the integer is beyond the 64-bit range of CEL")
    if value is None:
        return None
    if kind_of is float:
        if math.isfinite(value):
            return _Double(value)
        return _bad(path, "the number is not finite")
    if depth >= MAX_DEPTH:
        return _bad(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if type(key) is not str:
                return _bad(path, "a map key is not a string")
            converted[_String(key)] = _to_cel(item, (path, key), depth + 1)
        return celtypes.MapType(converted)
    if isinstance(value, (list, tuple)):
        return celtypes.ListType(
            [_to_cel(item, (path, index), depth + 1) for index, item in enumerate(value)]
        )
    if isinstance(value, (str, bool, int, float)):  # subclasses: as their JSON type
        return _to_cel(json_scalar(value), path, depth)
    return _bad(path, "the value is not JSON")


def json_scalar(value: Any) -> Any:
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    return value


class _Counter:
    __slots__ = ("left",)

    def __init__(self, limit: int):
        self.left = limit

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise ValueTooLarge


def to_json(value: Any, *, limit: int) -> Any:
    """CEL values back to plain JSON. Raises ValueTooLarge past about `limit` bytes of JSON,
    NotStorable for a non-finite number, and CELEvalError for an error value inside."""
    return _to_json(value, _Counter(limit), 0)


def _to_json(value: Any, counter: _Counter, depth: int) -> Any:
    if value is None or isinstance(value, celtypes.NullType):
        counter.spend(4)
        return None
    if isinstance(value, CELEvalError):
        raise value
    if isinstance(value, (celtypes.BoolType, bool)):
        counter.spend(5)
        return bool(value)
    if isinstance(value, int):
        counter.spend(20)
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotStorable(f"{_spelled(value)} is not a finite number (JSON cannot hold it)")
        counter.spend(24)
        return float(value)
    if isinstance(value, str):
        counter.spend(len(value) + 2)
        _check_text(value)
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        counter.spend(len(value) * 4 // 3 + 4)
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (celtypes.TimestampType, datetime)):
        counter.spend(32)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (celtypes.DurationType, timedelta)):
        counter.spend(24)
        return value.total_seconds()
    if isinstance(value, type):  # `type(x)` gives a celpy class: answer with its CEL name
        counter.spend(12)
        return _CEL_TYPE_NAMES.get(value, "type")
    if depth >= MAX_DEPTH:
        raise NotStorable(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        counter.spend(2)
        result = {}
        for key, item in value.items():
            name = _key(key)
            counter.spend(len(name) + 4)
            _check_text(name)
            result[name] = _to_json(item, counter, depth + 1)
        return result
    if isinstance(value, (list, tuple)):
        counter.spend(2)
        return [_to_json(item, counter, depth + 1) for item in value]
    raise NotStorable(f"a {kind(value)} cannot be turned into JSON")


def _check_text(text: str) -> None:
    if UNSTORABLE_TEXT.search(text):
        raise NotStorable(f"a string {_text_problem(text)}")


def _text_problem(text: str) -> str:
    if "\x00" in text:
        return "holds a NUL character (the database cannot store it)"
    return "holds an unpaired surrogate (it is not valid Unicode)"


def _key(key: Any) -> str:
    # JSON object keys are strings: CEL's int, uint and bool keys are written as text.
    if isinstance(key, (celtypes.BoolType, bool)):
        return "true" if key else "false"
    return str(int(key)) if isinstance(key, int) else str(key)


_CEL_TYPE_NAMES = {
    celtypes.BoolType: "bool",
    celtypes.IntType: "int",
    celtypes.UintType: "uint",
    celtypes.DoubleType: "double",
    celtypes.StringType: "string",
    celtypes.BytesType: "bytes",
    celtypes.ListType: "list",
    celtypes.MapType: "map",
    celtypes.NullType: "null_type",
    type(None): "null_type",
    celtypes.TimestampType: "google.protobuf.Timestamp",
    celtypes.DurationType: "google.protobuf.Duration",
    celtypes.TypeType: "type",
}


def unstorable(value: Any, *, where: str = "") -> str | None:
    """Why `value` (a step's output, plain Python) cannot be stored as jsonb, with its
    path, or None when it can: non-finite numbers, which JSON and jsonb refuse, and text
    with NUL characters or unpaired surrogates, which jsonb refuses."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{path or '/'} is {_spelled(item)}, not a finite number (JSON cannot hold it)"
        if isinstance(item, str) and UNSTORABLE_TEXT.search(item):
            return f"{path or '/'} {_text_problem(item)}"
        if isinstance(item, Mapping):
            for key in item:
                if isinstance(key, str) and UNSTORABLE_TEXT.search(key):
                    return f"{path or '/'} has a key that {_text_problem(key)}"
            stack.extend((v, f"{path}/{k}") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}/{i}") for i, v in enumerate(item))
    return None


def _spelled(number: float) -> str:
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
