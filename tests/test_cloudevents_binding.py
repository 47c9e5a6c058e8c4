"""The CloudEvents HTTP protocol binding (v1.0.2), rule by rule, against the real server:
what the producer sent is what is stored. Section numbers are the binding's.

Accepted requests take the ASGI fast path, refused ones Django's view, so both are covered."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from tests.factories import cloudevent
from workflows.events.models import Event

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/api/v1/events"
PROBLEM = "application/problem+json"


def binary_headers(**attributes) -> dict[str, str]:
    event = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/binding", "type": "t.b"}
    event.update(attributes)
    return {f"ce-{name}": value for name, value in event.items()}


def stored(response) -> Event:
    assert response.status_code == 202, response.text
    return Event.objects.get(pk=response.json()["id"])


def refused(response, attribute: str) -> dict:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert attribute in {e["attribute"] for e in body["errors"]}, body
    return body


# --- 3.1 Binary content mode -------------------------------------------------------------


def test_3_1_1_datacontenttype_is_the_content_type_header_with_its_parameters(api):
    response = api.post(
        URL,
        content=b'{"a": 1}',
        headers={**binary_headers(), "Content-Type": "application/json; charset=utf-8"},
    )

    event = stored(response)
    assert event.datacontenttype == "application/json; charset=utf-8"
    assert event.data == {"a": 1}


def test_3_1_1_a_ce_datacontenttype_header_must_not_be_sent(api):
    headers = {**binary_headers(datacontenttype="text/plain"), "Content-Type": "text/plain"}

    response = api.post(URL, content=b"hello", headers=headers)

    refused(response, "datacontenttype")


def test_3_1_2_the_body_is_the_data_byte_for_byte(api):
    payload = bytes(range(256))

    response = api.post(
        URL,
        content=payload,
        headers={**binary_headers(), "Content-Type": "application/octet-stream"},
    )

    event = stored(response)
    assert event.data_is_base64 and base64.b64decode(event.data) == payload


def test_3_1_2_text_in_another_charset_keeps_its_exact_bytes(api):
    payload = "café".encode("iso-8859-1")

    response = api.post(
        URL,
        content=payload,
        headers={**binary_headers(), "Content-Type": "text/plain; charset=iso-8859-1"},
    )

    event = stored(response)
    assert event.data_is_base64 and base64.b64decode(event.data) == payload


def test_3_1_3_1_header_names_are_case_insensitive_and_extensions_lower_case(api):
    ce_id = str(uuid.uuid4())
    headers = {
        "CE-SPECVERSION": "1.0",
        "Ce-Id": ce_id,
        "cE-sOURCE": "/binding",
        "Ce-Type": "t.case",
        "Ce-PartitionKey": "customer-7",
        "Content-Type": "application/json",
    }

    event = stored(api.post(URL, content=b"{}", headers=headers))

    assert (event.ce_id, event.source, event.type) == (ce_id, "/binding", "t.case")
    assert event.extensions["partitionkey"] == "customer-7"


def test_a_repeated_header_is_read_as_django_reads_it_on_both_paths(api):
    headers = [*binary_headers().items(), ("Content-Type", "application/json")]
    headers += [("ce-comexample", "a"), ("ce-comexample", "b%2Cc"), ("ce-my_ext", "dropped")]

    event = stored(api.post(URL, content=b"{}", headers=headers))

    # Joined with a comma (RFC 9110 5.3) before percent-decoding; underscores dropped, as
    # Django's ASGI handler does, so the fast path and the view store the same event.
    assert event.extensions["comexample"] == "a,b,c"
    assert "my_ext" not in event.extensions


def test_3_1_3_2_percent_encoded_utf8_is_decoded_as_in_the_specs_example(api):
    headers = binary_headers(subject="Euro%20%E2%82%AC%20%F0%9F%98%80", comexample="%e2%82%ac")

    event = stored(
        api.post(URL, content=b"{}", headers={**headers, "Content-Type": "application/json"})
    )

    assert event.subject == "Euro € 😀"
    assert event.extensions["comexample"] == "€"  # lower-case hex is accepted too


def test_3_1_3_2_a_single_round_of_percent_decoding_and_plus_is_no_space(api):
    headers = binary_headers(subject="100%2541+1")

    event = stored(
        api.post(URL, content=b"{}", headers={**headers, "Content-Type": "application/json"})
    )

    assert event.subject == "100%41+1"


def test_3_1_3_2_unnecessarily_encoded_characters_are_accepted(api):
    headers = binary_headers(subject="%61%62%63")

    event = stored(
        api.post(URL, content=b"{}", headers={**headers, "Content-Type": "application/json"})
    )

    assert event.subject == "abc"


def test_3_1_3_2_double_quoted_values_are_unescaped_before_percent_decoding(api):
    headers = binary_headers(subject='"say \\"hi\\" to %E2%82%AC"')

    event = stored(
        api.post(URL, content=b"{}", headers={**headers, "Content-Type": "application/json"})
    )

    assert event.subject == 'say "hi" to €'


@pytest.mark.parametrize("value", ["%C0%A0", "%FF", "%E2%82"])
def test_3_1_3_2_percent_encoded_bytes_that_are_not_utf8_are_refused(api, value):
    headers = binary_headers(subject=value)

    response = api.post(URL, content=b"{}", headers={**headers, "Content-Type": "application/json"})

    body = refused(response, "subject")
    assert "UTF-8" in body["detail"]


def test_3_1_3_2_raw_non_ascii_in_a_header_is_refused_not_stored_garbled(api):
    headers = {k: v.encode() for k, v in binary_headers().items()}
    headers["ce-subject"] = "café".encode()  # UTF-8 bytes straight into the header

    response = api.post(
        URL, content=b"{}", headers={**headers, "Content-Type": b"application/json"}
    )

    body = refused(response, "subject")
    assert "percent-encode" in body["detail"]


def test_3_1_3_2_a_stray_percent_is_refused(api):
    headers = binary_headers(subject="50%")

    response = api.post(URL, content=b"{}", headers={**headers, "Content-Type": "application/json"})

    refused(response, "subject")


def test_3_1_3_2_a_decoded_control_character_is_refused(api):
    headers = binary_headers(subject="a%0Ab")

    response = api.post(URL, content=b"{}", headers={**headers, "Content-Type": "application/json"})

    refused(response, "subject")


def test_3_1_3_2_non_ascii_values_from_the_official_sdk_are_stored_as_sent(api):
    event = CloudEvent(
        attributes={
            "type": "com.example.übung",
            "source": "/sdk/%C3%BCbung",  # a URI-reference: non-ASCII only percent-encoded
            "id": f"ид-{uuid.uuid4()}",
            "subject": 'Grüße "aus" Köln: 100% € 😀',
            "time": datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=UTC),
            "datacontenttype": "application/json",
            "comexample": "naïve value",
        },
        data={"text": "日本語"},
    )
    message = ce_http.to_binary_event(event)
    assert any("%" in v for k, v in message.headers.items() if k.startswith("ce-"))

    row = stored(api.post(URL, content=message.body, headers=message.headers))

    assert row.type == event.get_type()
    assert row.source == event.get_source()
    assert row.ce_id == event.get_id()
    assert row.subject == event.get_subject()
    assert row.time == event.get_time()
    assert row.extensions["comexample"] == "naïve value"
    assert row.data == {"text": "日本語"}


def test_3_1_3_2_the_same_sdk_event_in_structured_mode_is_stored_alike(api):
    attributes = {
        "type": "com.example.übung",
        "source": "/sdk",
        "id": f"ид-{uuid.uuid4()}",
        "subject": "Grüße € 😀",
        "datacontenttype": "application/json",
    }
    binary = stored(
        api.post(
            URL, **_message(ce_http.to_binary_event(CloudEvent(attributes=attributes, data={})))
        )
    )
    structured = api.post(
        URL, **_message(ce_http.to_structured_event(CloudEvent(attributes=attributes, data={})))
    )

    assert structured.status_code == 200 and structured.json()["id"] == binary.pk  # a repeat
    assert binary.subject == "Grüße € 😀"


def _message(message) -> dict:
    return {"content": message.body, "headers": message.headers}


# --- 3.2 Structured content mode ---------------------------------------------------------


def test_3_2_1_the_structured_media_type_is_matched_with_parameters_and_any_case(api):
    body = cloudevent(subject="ö")

    response = api.post(
        URL,
        content=json.dumps(body).encode(),
        headers={"Content-Type": "Application/CloudEvents+JSON; charset=UTF-8"},
    )

    assert stored(response).subject == "ö"


def test_3_2_3_ce_headers_beside_a_structured_event_do_not_override_its_payload(api):
    body = cloudevent(subject="from-the-body")

    response = api.post(
        URL,
        content=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/cloudevents+json",
            "ce-subject": "from-a-header",
            "ce-id": "header-id",
        },
    )

    event = stored(response)
    assert (event.subject, event.ce_id) == ("from-the-body", body["id"])


def test_3_2_2_typed_extensions_and_base64_data_are_stored_as_sent(api):
    body = cloudevent(count=7, flag=True, label="x")
    del body["data"]
    body["data_base64"] = base64.b64encode(b"\x00\x01binary").decode()

    event = stored(
        api.post(
            URL,
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/cloudevents+json"},
        )
    )

    sent = {"count": 7, "flag": True, "label": "x"}
    assert {k: v for k, v in event.extensions.items() if k in sent} == sent
    assert event.data_is_base64 and base64.b64decode(event.data) == b"\x00\x01binary"


# --- 3.3 Batched content mode -------------------------------------------------------------

BATCH = {"Content-Type": "application/cloudevents-batch+json; charset=UTF-8"}


def test_3_3_every_event_of_a_batch_is_stored_in_order_with_its_own_content_type(api):
    first = cloudevent(subject="1")
    second = cloudevent(subject="2", datacontenttype="text/plain", data="plain")

    response = api.post(URL, content=json.dumps([first, second]).encode(), headers=BATCH)

    assert response.status_code == 202, response.text
    ids = [e["ce_id"] for e in response.json()["events"]]
    assert ids == [first["id"], second["id"]]
    plain = Event.objects.get(ce_id=second["id"])
    assert (plain.datacontenttype, plain.data) == ("text/plain", "plain")


def test_3_3_2_a_batch_may_be_empty(api):
    response = api.post(URL, content=b"[]", headers=BATCH)

    assert response.status_code == 202, response.text
    assert response.json() == {"events": []}


def test_3_3_2_all_events_of_a_batch_have_the_same_specversion(api):
    entries = [cloudevent(), cloudevent(specversion="0.3")]

    response = api.post(URL, content=json.dumps(entries).encode(), headers=BATCH)

    body = refused(response, "specversion")
    assert [e["index"] for e in body["errors"]] == [1]
    assert not Event.objects.filter(ce_id__in=[e["id"] for e in entries]).exists()


# --- Times valid in RFC 3339 but outside what UTC can hold (were 500s) --------------------

OUT_OF_RANGE = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_an_out_of_range_time_is_refused_in_structured_mode(api, when):
    response = api.post(
        URL,
        content=json.dumps(cloudevent(time=when)).encode(),
        headers={"Content-Type": "application/cloudevents+json"},
    )

    refused(response, "time")


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_an_out_of_range_time_is_refused_in_binary_mode(api, when):
    headers = {**binary_headers(time=when), "Content-Type": "application/json"}

    refused(api.post(URL, content=b"{}", headers=headers), "time")


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_an_out_of_range_time_is_refused_in_batch_mode(api, when):
    entries = [cloudevent(), cloudevent(time=when)]

    body = refused(api.post(URL, content=json.dumps(entries).encode(), headers=BATCH), "time")

    assert body["errors"][0]["index"] == 1
    assert not Event.objects.filter(ce_id=entries[0]["id"]).exists()


def test_the_extreme_times_utc_can_hold_are_accepted(api):
    low, high = cloudevent(time="0001-01-01T00:00:00Z"), cloudevent(time="9999-12-31T23:59:59Z")

    response = api.post(URL, content=json.dumps([low, high]).encode(), headers=BATCH)

    assert response.status_code == 202, response.text
    assert Event.objects.get(ce_id=low["id"]).time.year == 1
    assert Event.objects.get(ce_id=high["id"]).time.year == 9999
