"""CloudEvents 1.0 envelopes: parse and validate, naming the attribute that is wrong.

Structured mode (one JSON object), binary mode (ce-* headers + any body) and batch mode (a
JSON array of structured events) all end in the same attribute validation.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from rfc3986_validator import validate_rfc3986

from workflows.events import binary_headers

REQUIRED = ("id", "source", "specversion", "type")
OPTIONAL = ("datacontenttype", "dataschema", "subject", "time")
EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
# RFC 2046 type/subtype with optional parameters; deliberately tolerant of parameter syntax.
MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*(\s*;.*)?$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
MAX_JSON_DEPTH = 64
# What RFC 3986 lets a path segment hold unencoded (unreserved, sub-delims, ":" and "@").
PATH_SEGMENT = "-._~!$&'()*+,;=:@"
TEXT_MEDIA = ("application/xml", "application/x-www-form-urlencoded")
# What the event store's columns hold (workflows.models.Event): longer is refused, not cut.
# The id is also the correlation and causation id of an event that names none (255).
MAX_LENGTHS = {
    "id": 255,
    "correlationid": 255,
    "causationid": 255,
    "source": 1024,
    "type": 255,
    "subject": 1024,
    "datacontenttype": 255,
    "dataschema": 1024,
}
# PostgreSQL stores neither NUL characters nor unpaired surrogates (JSON can spell both).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# CloudEvents String (spec 1.0.2, type system): no control characters in attribute values.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


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
    data_is_base64: bool = False
    extensions: dict[str, Any] = field(default_factory=dict)


class SchemaViolation(Exception):
    """The data of an event breaks its type's schema (the registry, workflows/events/schemas.py,
    checks it; defined here, with InvalidEvent, for everything that reports a refusal)."""

    def __init__(self, event_type: str, version: int | None, errors: list[dict[str, str]]):
        self.event_type, self.version, self.errors = event_type, version, errors
        super().__init__(
            f"{event_type} schema v{version}: "
            + "; ".join(f"{e['path']}: {e['message']}" for e in errors)
        )


class InvalidEvent(Exception):
    """`problems` is a list of {"attribute": name, "message": text} (plus "index" in a batch)."""

    def __init__(self, problems: list[dict[str, Any]]):
        self.problems = problems
        super().__init__("; ".join(_describe(p) for p in problems))


def _describe(problem: Mapping[str, Any]) -> str:
    where = f"[{problem['index']}] " if "index" in problem else ""
    return f"{where}{problem['attribute']}: {problem['message']}"


# A run of 19 digits or more: a number orjson would read as a float (an integer beyond 64
# bits) where json keeps it exact, so such a body takes json's path (orjson.loads).
_LONG_NUMBER = re.compile(rb"\d{19}")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\{\}|\[\]")


def json_depth_ok(raw: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Check nesting before json.loads, which recurses and can blow the stack. Done with
    regular expressions (C speed) rather than a loop over every character: strings are
    cut out, then innermost bracket pairs removed, one nesting level per pass."""
    if raw.count("{") + raw.count("[") <= limit:
        return True
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", raw))
    for _ in range(limit):
        brackets, removed = _INNERMOST.subn("", brackets)
        if not brackets or not removed:  # all levels removed, or not JSON (loads says why)
            return True
    return not brackets


def loads_json(body: bytes, *, what: str = "(body)") -> Any:
    """Decode a JSON body, raising InvalidEvent for bad UTF-8, depth or syntax."""
    # The usual body through orjson (a fifth of json's time with its hooks): it refuses
    # what json's path below refuses (bad UTF-8, NaN, Infinity, numbers too large for a
    # double, and also unpaired surrogates, which validate() would refuse anyway) and
    # reads the rest alike, except integers beyond 64 bits (kept exact by json) and
    # nesting (checked by json_depth_ok); those bodies, and every refusal, go the exact
    # way below, which says why.
    if body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH and not _LONG_NUMBER.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent([{"attribute": what, "message": f"not UTF-8: {exc}"}]) from exc
    if not json_depth_ok(text):
        raise InvalidEvent(
            [{"attribute": what, "message": f"JSON nested deeper than {MAX_JSON_DEPTH} levels"}]
        )
    try:
        return json.loads(text, parse_constant=_not_a_number, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent([{"attribute": what, "message": f"invalid JSON: {exc}"}]) from exc


def _not_a_number(literal: str):
    raise ValueError(f"{literal} is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{literal} is too large for a JSON number")
    return value


def _storable(value: Any) -> bool:
    if isinstance(value, str):
        return not UNSTORABLE.search(value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


def validate(attributes: Mapping[str, Any], *, data: Any, data_is_base64: bool) -> Envelope:
    """Check context attributes against the CloudEvents 1.0 spec; return the Envelope."""
    problems: list[dict[str, str]] = []

    def bad(attribute: str, message: str) -> None:
        problems.append({"attribute": attribute, "message": message})

    for name in REQUIRED:
        value = attributes.get(name)
        if value is None:
            bad(name, "required attribute is missing")
        elif not isinstance(value, str) or not value:
            bad(name, "must be a non-empty string")
    specversion = attributes.get("specversion")
    if isinstance(specversion, str) and specversion and specversion != "1.0":
        bad("specversion", f"unsupported specversion {specversion!r}; expected '1.0'")
    for name in OPTIONAL:
        value = attributes.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            bad(name, "must be a non-empty string when present")
    source = attributes.get("source")
    if isinstance(source, str) and source and not is_uri_reference(source):
        bad("source", "must be a URI-reference (RFC 3986), e.g. /orders or https://shop.example")
    dataschema = attributes.get("dataschema")
    if isinstance(dataschema, str) and dataschema and not validate_rfc3986(dataschema, "URI"):
        bad("dataschema", "must be an absolute URI (RFC 3986)")

    when = None
    time_text = attributes.get("time")
    if isinstance(time_text, str) and time_text:
        if not RFC3339.match(time_text):
            bad("time", "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z")
        else:
            when = _instant(time_text)
            if when is None:
                bad("time", "is not a date and time between years 1 and 9999 in UTC")
    content_type = attributes.get("datacontenttype")
    if isinstance(content_type, str) and content_type and not MEDIA_TYPE.match(content_type):
        bad("datacontenttype", "must be an RFC 2046 media type such as application/json")

    known = set(REQUIRED) | set(OPTIONAL)
    extensions = {}
    for name, value in attributes.items():
        if name in known:
            continue
        if not EXTENSION_NAME.match(name):
            bad(name, "extension attribute names are 1-20 lowercase letters or digits")
        elif isinstance(value, float) or not isinstance(value, (str, int, bool)):
            bad(name, "extension values must be strings, integers or booleans")
        elif type(value) is int and not -(2**31) <= value < 2**31:
            bad(name, "extension integers are 32-bit signed (CloudEvents Integer)")
        else:
            extensions[name] = value
    # One pass over the string attributes: length, control characters, storability.
    for name, value in attributes.items():
        if type(value) is not str:
            continue  # non-strings are refused above, by type
        longest = MAX_LENGTHS.get(name)
        if longest and len(value) > longest:
            bad(name, f"is longer than {longest} characters")
        if CONTROL.search(value):
            bad(name, "must not contain control characters (U+0000-U+001F, U+007F-U+009F)")
        elif UNSTORABLE.search(value):
            bad(name, "contains a NUL character or an unpaired surrogate")
    if not _storable(data):
        bad("data", "contains a NUL character or an unpaired surrogate")
    if problems:
        raise InvalidEvent(problems)
    return Envelope(
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        specversion=attributes["specversion"],
        subject=attributes.get("subject") or "",
        time=when,
        datacontenttype=attributes.get("datacontenttype") or "",
        dataschema=attributes.get("dataschema") or "",
        data=data,
        data_is_base64=data_is_base64,
        extensions=extensions,
    )


@functools.lru_cache(maxsize=4096)
def is_uri_reference(text: str) -> bool:
    """RFC 3986 URI-reference. Cached: producers reuse a few sources, and the validator's
    regular expression costs ~8 µs on an absolute URL."""
    return validate_rfc3986(text, "URI_reference") is not None


def length_problems(attributes: Mapping[str, Any]) -> list[dict[str, str]]:
    """Attributes longer than their column: refused here, so that SQLite (which does not
    enforce varchar lengths) and PostgreSQL behave alike."""
    return [
        {"attribute": name, "message": f"is longer than {longest} characters"}
        for name, longest in MAX_LENGTHS.items()
        if isinstance(attributes.get(name), str) and len(attributes[name]) > longest
    ]


def check_storable(envelope: Envelope) -> None:
    """For envelopes built in code (emit_event, schedules, sub-workflows) rather than
    parsed: the same length and source rules as validate(). Raises InvalidEvent."""
    attributes = {
        "id": envelope.id,
        "source": envelope.source,
        "type": envelope.type,
        "subject": envelope.subject,
        "datacontenttype": envelope.datacontenttype,
        "dataschema": envelope.dataschema,
        **envelope.extensions,
    }
    problems = length_problems(attributes)
    if not is_uri_reference(envelope.source):
        problems.append({"attribute": "source", "message": "must be a URI-reference (RFC 3986)"})
    if problems:
        raise InvalidEvent(problems)


def path_segment(name: str) -> str:
    """A name (a user, a token) made fit for a path segment of a source, which must be a
    URI-reference: "CI bot" gives CI%20bot; names of plain characters read as they are."""
    return quote(name, safe=PATH_SEGMENT)


def _instant(text: str) -> datetime | None:
    """The RFC 3339 text as an aware datetime, or None when it is no date or falls outside
    what datetime holds once converted to UTC (0001-01-01T00:00:00+01:00 parses, yet is
    year 0 in UTC: the database would fail on it)."""
    try:
        when = datetime.fromisoformat(text.upper())
        when.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return when


def from_structured(obj: Any) -> Envelope:
    """One structured-mode CloudEvent, already decoded from JSON."""
    if not isinstance(obj, dict):
        raise InvalidEvent([{"attribute": "(body)", "message": "a CloudEvent is a JSON object"}])
    if "data" in obj and "data_base64" in obj:
        raise InvalidEvent(
            [
                {
                    "attribute": "data_base64",
                    "message": "data and data_base64 must not both be present",
                }
            ]
        )
    data, is_base64 = obj.get("data"), False
    if "data_base64" in obj:
        encoded = obj["data_base64"]
        try:
            base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise InvalidEvent(
                [{"attribute": "data_base64", "message": "is not valid base64"}]
            ) from exc
        data, is_base64 = encoded, True
    attributes = {k: v for k, v in obj.items() if k not in ("data", "data_base64")}
    return validate(attributes, data=data, data_is_base64=is_base64)


def from_batch(items: Any, *, max_entries: int) -> list[Envelope]:
    """A batch (JSON array of structured events); problems carry the entry's index."""
    if not isinstance(items, list):
        raise InvalidEvent([{"attribute": "(body)", "message": "a batch is a JSON array"}])
    if len(items) > max_entries:
        raise InvalidEvent(
            [{"attribute": "(body)", "message": f"a batch holds at most {max_entries} events"}]
        )
    envelopes, problems = [], []
    for index, item in enumerate(items):
        try:
            envelopes.append(from_structured(item))
        except InvalidEvent as exc:
            problems.extend({"index": index, **p} for p in exc.problems)
    if problems:
        raise InvalidEvent(problems)
    return envelopes


def from_binary(headers: Mapping[str, str], body: bytes, content_type: str) -> Envelope:
    """Binary mode (HTTP binding 3.1): attributes in ce-* headers, decoded as
    binary_headers says; datacontenttype is the Content-Type; the body is the data."""
    attributes: dict[str, Any] = {}
    problems = []
    for name, raw in binary_headers.attribute_headers(headers).items():
        try:
            attributes[name] = binary_headers.decode_value(raw)
        except binary_headers.BadHeaderValue as exc:
            problems.append({"attribute": name, "message": f"ce-{name} header: {exc}"})
    if "datacontenttype" in attributes:
        problems.append(
            {
                "attribute": "datacontenttype",
                "message": "in binary mode it is the Content-Type header; "
                "a ce-datacontenttype header must not be sent",
            }
        )
    if problems:
        raise InvalidEvent(problems)
    if content_type:
        attributes["datacontenttype"] = content_type
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    data: Any
    is_base64 = False
    if not body:
        data = None
    elif media == "application/json" or media.endswith("+json"):
        data = loads_json(body, what="data")
    elif _utf8_text(media, parameters):
        try:
            data = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent([{"attribute": "data", "message": f"not UTF-8: {exc}"}]) from exc
    else:
        data, is_base64 = base64.b64encode(body).decode(), True
    return validate(attributes, data=data, data_is_base64=is_base64)


def _utf8_text(media: str, parameters: str) -> bool:
    """Text stored as a string; text in another charset keeps its exact bytes (base64)."""
    if not (media.startswith("text/") or media in TEXT_MEDIA):
        return False
    charset = re.search(r"charset\s*=\s*\"?([\w.:-]+)", parameters, re.IGNORECASE)
    return charset is None or charset.group(1).lower() in ("utf-8", "utf8", "us-ascii")


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
    out["data_base64" if event.data_is_base64 else "data"] = event.data
    return out


def envelope_json(envelope: Envelope) -> dict[str, Any]:
    """A structured CloudEvent dict of an envelope, for dead-letter payloads."""
    out: dict[str, Any] = {
        "specversion": envelope.specversion,
        "id": envelope.id,
        "source": envelope.source,
        "type": envelope.type,
    }
    if envelope.subject:
        out["subject"] = envelope.subject
    if envelope.time:
        out["time"] = envelope.time.isoformat().replace("+00:00", "Z")
    if envelope.datacontenttype:
        out["datacontenttype"] = envelope.datacontenttype
    if envelope.dataschema:
        out["dataschema"] = envelope.dataschema
    out.update(envelope.extensions)
    out["data_base64" if envelope.data_is_base64 else "data"] = envelope.data
    return out
