"""CloudEvents 1.0 envelopes: parse and validate, naming the attribute that is wrong."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

REQUIRED = ("id", "source", "specversion", "type")
OPTIONAL = ("datacontenttype", "dataschema", "subject", "time")
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
# RFC 2046 type/subtype with optional parameters; deliberately tolerant of parameter syntax.
MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*(\s*;.*)?$")
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
MAX_JSON_DEPTH = 64


@dataclass
class Envelope:
    id: str
    source: str
    type: str
    specversion: str = "1.0"
    subject: str = ""
    time: datetime | None = None
    datacontenttype: str = ""
    dataschema: str = ""
    data: Any = None
    extensions: dict[str, Any] = field(default_factory=dict)


class InvalidEvent(Exception):
    """`problems` is a list of {"attribute": name, "message": text}."""

    def __init__(self, problems: list[dict[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{p['attribute']}: {p['message']}" for p in problems))


def json_depth_ok(raw: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Check nesting before json.loads, which recurses and can blow the stack."""
    depth = 0
    in_string = escaped = False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def loads_json(body: bytes) -> Any:
    """Decode a JSON body, raising InvalidEvent for bad UTF-8, depth or syntax."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent([{"attribute": "(body)", "message": f"not UTF-8: {exc}"}]) from exc
    if not json_depth_ok(text):
        raise InvalidEvent(
            [{"attribute": "(body)", "message": f"JSON nested deeper than {MAX_JSON_DEPTH}"}]
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent([{"attribute": "(body)", "message": f"invalid JSON: {exc}"}]) from exc


def from_structured(obj: Any) -> Envelope:
    """Validate one structured-mode CloudEvent (already decoded from JSON)."""
    if not isinstance(obj, dict):
        raise InvalidEvent([{"attribute": "(body)", "message": "a CloudEvent is a JSON object"}])
    problems: list[dict[str, str]] = []

    def bad(attribute: str, message: str) -> None:
        problems.append({"attribute": attribute, "message": message})

    for name in REQUIRED:
        value = obj.get(name)
        if value is None:
            bad(name, "required attribute is missing")
        elif not isinstance(value, str) or not value:
            bad(name, "must be a non-empty string")
    if isinstance(obj.get("specversion"), str) and obj["specversion"] and obj["specversion"] != "1.0":
        bad("specversion", f"unsupported specversion {obj['specversion']!r}; expected '1.0'")
    for name in OPTIONAL:
        if name in obj and obj[name] is not None and (not isinstance(obj[name], str) or not obj[name]):
            bad(name, "must be a non-empty string when present")

    when = None
    if isinstance(obj.get("time"), str) and obj["time"]:
        if not RFC3339.match(obj["time"]):
            bad("time", "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z")
        else:
            try:
                when = datetime.fromisoformat(obj["time"].replace("z", "Z"))
            except ValueError:
                bad("time", "is not a valid date and time")
    if isinstance(obj.get("datacontenttype"), str) and obj["datacontenttype"]:
        if not MEDIA_TYPE.match(obj["datacontenttype"]):
            bad("datacontenttype", "must be an RFC 2046 media type such as application/json")
    if "data" in obj and "data_base64" in obj:
        bad("data_base64", "data and data_base64 must not both be present")

    data = obj.get("data")
    if "data_base64" in obj and "data" not in obj:
        try:
            raw = base64.b64decode(obj["data_base64"], validate=True)
            data = {"base64": base64.b64encode(raw).decode()}
        except (binascii.Error, TypeError, ValueError):
            bad("data_base64", "is not valid base64")

    known = set(REQUIRED) | set(OPTIONAL) | {"data", "data_base64"}
    extensions = {}
    for name, value in obj.items():
        if name in known:
            continue
        if not EXTENSION_NAME.match(name):
            bad(name, "extension attribute names are 1-20 lowercase letters or digits")
        elif not isinstance(value, (str, int, bool)) or isinstance(value, float):
            bad(name, "extension values must be strings, integers or booleans")
        else:
            extensions[name] = value
    if problems:
        raise InvalidEvent(problems)
    return Envelope(
        id=obj["id"],
        source=obj["source"],
        type=obj["type"],
        specversion=obj["specversion"],
        subject=obj.get("subject") or "",
        time=when,
        datacontenttype=obj.get("datacontenttype") or "",
        dataschema=obj.get("dataschema") or "",
        data=data,
        extensions=extensions,
    )


def to_structured(event) -> dict[str, Any]:
    """The stored Event as a structured CloudEvent dict (for steps and the API)."""
    out: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.ce_id,
        "source": event.source,
        "type": event.type,
    }
    for name in ("subject", "datacontenttype", "dataschema"):
        if getattr(event, name):
            out[name] = getattr(event, name)
    if event.time:
        out["time"] = event.time.isoformat().replace("+00:00", "Z")
    out.update(event.extensions or {})
    out["data"] = event.data
    return out
