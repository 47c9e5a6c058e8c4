"""Hostile and arbitrary values through the CloudEvents parsers: every input ends in an
Envelope or an InvalidEvent naming attributes, never another exception (a 500 upstream),
and what the official SDK encodes in binary mode decodes to exactly what it was given."""

from __future__ import annotations

import json
from datetime import UTC

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from workflows.events.envelope import (
    MAX_LENGTHS,
    InvalidEvent,
    from_binary,
    from_structured,
    loads_json,
    path_segment,
)

# CloudEvents String: any Unicode but control characters, surrogates and NUL.
ATTRIBUTE_TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x85"),
    min_size=1,
    max_size=60,
)
ANY_JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
ATTRIBUTE_NAMES = st.sampled_from(
    ["id", "source", "type", "specversion", "subject", "time", "datacontenttype",
     "dataschema", "comexample", "Bad-Name", "correlationid"]
)  # fmt: skip


def base(**extra):
    return {"specversion": "1.0", "id": "p-1", "source": "/props", "type": "t.p", **extra}


@settings(max_examples=300)
@given(st.dictionaries(ATTRIBUTE_NAMES, ANY_JSON_SCALAR, max_size=8))
def test_any_structured_attributes_are_parsed_or_refused_by_name(attributes):
    try:
        envelope = from_structured(attributes)
    except InvalidEvent as exc:
        assert exc.problems and all("attribute" in p for p in exc.problems)
    else:
        assert envelope.id and envelope.source and envelope.type


@settings(max_examples=300)
@given(
    year=st.integers(1, 9999),
    month=st.integers(1, 12),
    day=st.integers(1, 28),
    hours=st.integers(0, 23),
    offset_hours=st.integers(0, 23),
    sign=st.sampled_from("+-"),
    fraction=st.text("0123456789", max_size=9),
)
def test_any_rfc3339_time_is_stored_as_its_utc_instant_or_refused(
    year, month, day, hours, offset_hours, sign, fraction
):
    text = f"{year:04d}-{month:02d}-{day:02d}T{hours:02d}:00:00"
    text += f".{fraction}" if fraction else ""
    text += f"{sign}{offset_hours:02d}:00"
    try:
        envelope = from_structured(base(time=text))
    except InvalidEvent as exc:
        assert {p["attribute"] for p in exc.problems} == {"time"}
    else:
        assert 1 <= envelope.time.astimezone(UTC).year <= 9999


@settings(max_examples=300)
@given(subject=ATTRIBUTE_TEXT, extension=ATTRIBUTE_TEXT)
def test_what_the_sdk_encodes_in_binary_mode_decodes_to_what_it_was_given(subject, extension):
    event = CloudEvent(
        attributes={
            "id": "p-1",
            "source": "/props",
            "type": "t.p",
            "subject": subject,
            "comexample": extension,
            "datacontenttype": "application/json",
        },
        data={},
    )
    message = ce_http.to_binary_event(event)

    envelope = from_binary(message.headers, message.body, message.headers["content-type"])

    assert (envelope.subject, envelope.extensions["comexample"]) == (subject, extension)


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_any_header_value_is_decoded_or_refused_by_name(value):
    headers = {f"ce-{k}": v for k, v in base().items()}
    headers["ce-subject"] = value.encode("utf-8", "surrogatepass").decode("latin-1")
    try:
        envelope = from_binary(headers, b"{}", "application/json")
    except InvalidEvent as exc:
        assert {p["attribute"] for p in exc.problems} == {"subject"}
    else:
        assert envelope.subject


@settings(max_examples=200)
@given(st.text(min_size=1, max_size=40))
def test_a_source_built_from_any_name_is_accepted(name):
    source = f"/signalbox/manual/{path_segment(name)}"
    if len(source) <= MAX_LENGTHS["source"]:
        assert from_structured(base(source=source)).source == source


ANY_JSON = st.recursive(
    ANY_JSON_SCALAR | st.integers() | st.floats(min_value=1e300, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=500)
@given(ANY_JSON, st.booleans())
def test_any_json_body_decodes_to_exactly_what_json_reads(value, pretty):
    # orjson takes the usual body and json the rest (loads_json): both ways must agree,
    # integers of any size included (orjson alone would make those beyond 64 bits floats).
    body = json.dumps(value, indent=2 if pretty else None, ensure_ascii=pretty).encode()

    decoded = loads_json(body)

    assert decoded == value
    assert json.dumps(decoded) == json.dumps(value)  # same types: 1 stays 1, not 1.0


@pytest.mark.parametrize(
    "body",
    [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e400", b"[-1E309]", b"\xff", b"{", b""],
)
def test_what_json_refuses_is_refused_whichever_way_the_body_is_read(body):
    with pytest.raises(InvalidEvent):
        loads_json(body)


def test_nesting_deeper_than_the_limit_is_refused_before_decoding():
    with pytest.raises(InvalidEvent, match="nested deeper"):
        loads_json(b"[" * 65 + b"]" * 65)
    assert loads_json(b"[" * 64 + b"]" * 64) is not None
