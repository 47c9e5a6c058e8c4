"""Group commit: the events of many requests share one transaction, and nothing accepted
is lost or wrongly refused because it shared it."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest
from django.db import DataError, connection
from django.test.utils import CaptureQueriesContext

from tests.factories import cloudevent
from workflows.access.tokens import create_api_token, identify, revoke_api_token
from workflows.events import bus
from workflows.events import intake as event_intake
from workflows.events.envelope import from_structured
from workflows.events.group_commit import GroupCommitter
from workflows.events.models import Event, EventSchema, EventType

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token_id() -> int:
    token, _plaintext = create_api_token(name="group", role="editor")
    return token.pk


def submission(token_id: int | None, *ids: str, channel: str = "http", **fields):
    envelopes = [from_structured(cloudevent(id=i, **fields)) for i in ids]
    return event_intake.Submission(envelopes, token_id=token_id, channel=channel)


def commit_once(committer: GroupCommitter, *submissions) -> list[Future]:
    """Queue the submissions and run one cycle of the committer on this thread."""
    futures = [committer.submit(s) for s in submissions]
    committer._commit(committer._take())
    return futures


def test_queued_requests_are_stored_with_as_many_statements_as_a_single_one(token_id):
    one, many = GroupCommitter(), GroupCommitter()
    with CaptureQueriesContext(connection) as alone:
        commit_once(one, submission(token_id, "a-0"))
    with CaptureQueriesContext(connection) as grouped:
        futures = commit_once(many, *(submission(token_id, f"b-{n}") for n in range(20)))

    assert len(grouped.captured_queries) == len(alone.captured_queries)
    assert [f.result().accepted[0].duplicate for f in futures] == [False] * 20
    assert Event.objects.filter(ce_id__startswith="b-").count() == 20


def test_the_next_group_marks_the_last_groups_events_published(token_id):
    committer = GroupCommitter()
    [first] = commit_once(committer, submission(token_id, "m-1"))
    event_id = first.result().accepted[0].id
    assert Event.objects.get(pk=event_id).published_at is None  # on the bus, not yet marked

    commit_once(committer, submission(token_id, "m-2"))

    assert Event.objects.get(pk=event_id).published_at is not None


def test_idle_marks_are_written_alone(token_id):
    committer = GroupCommitter()
    [first] = commit_once(committer, submission(token_id, "idle-1"))

    committer._write_marks_alone()

    assert Event.objects.get(pk=first.result().accepted[0].id).published_at is not None


def test_a_request_the_database_refuses_fails_alone(token_id):
    committer = GroupCommitter()
    # A channel longer than its column: the group's INSERT fails, each is tried alone.
    bad = submission(token_id, "x-bad", channel="c" * 40)
    good = [submission(token_id, f"x-{n}") for n in range(3)]

    futures = commit_once(committer, good[0], bad, *good[1:])

    with pytest.raises(DataError):
        futures[1].result()
    assert all(not f.result().error for f in futures[:1] + futures[2:])
    assert sorted(Event.objects.values_list("ce_id", flat=True)) == ["x-0", "x-1", "x-2"]


def test_a_token_revoked_after_authentication_stores_nothing(token_id):
    revoke_api_token(name="group", actor="test")
    committer = GroupCommitter()
    other, _plaintext = create_api_token(name="other", role="editor")

    refused, accepted = commit_once(
        committer, submission(token_id, "r-1"), submission(other.pk, "r-2")
    )

    assert isinstance(refused.result().error, event_intake.TokenRevoked)
    assert not accepted.result().error
    assert list(Event.objects.values_list("ce_id", flat=True)) == ["r-2"]


def test_a_schema_violation_refuses_its_request_and_no_other(token_id):
    event_type = EventType.objects.create(name="com.example.checked")
    EventSchema.objects.create(
        event_type=event_type,
        version=1,
        schema={"type": "object", "required": ["order"]},
    )
    committer = GroupCommitter()

    broken, valid, untyped = commit_once(
        committer,
        submission(token_id, "s-1", type="com.example.checked", data={"no": "order"}),
        submission(token_id, "s-2", type="com.example.checked", data={"order": 1}),
        submission(token_id, "s-3"),
    )

    assert isinstance(broken.result().error, event_intake.SchemaViolations)
    assert valid.result().accepted[0].validation == "valid"
    assert untyped.result().accepted[0].validation == "unvalidated"
    assert sorted(Event.objects.values_list("ce_id", flat=True)) == ["s-2", "s-3"]


def test_a_repeat_in_the_same_group_is_answered_as_a_duplicate_of_the_first(token_id):
    committer = GroupCommitter()

    first, again = commit_once(committer, submission(token_id, "d-1"), submission(token_id, "d-1"))

    assert first.result().accepted[0].duplicate is False
    assert again.result().accepted[0].duplicate is True
    assert again.result().accepted[0].id == first.result().accepted[0].id
    assert Event.objects.filter(ce_id="d-1").count() == 1


def test_new_events_reach_the_bus(token_id, settings):
    committer = GroupCommitter()
    [future] = commit_once(committer, submission(token_id, "bus-1"))
    event = Event.objects.get(pk=future.result().accepted[0].id)

    entries = bus.client().xrevrange(bus.stream_key(bus.partition_for(event)), count=50)

    assert any(int(f.get(b"event") or f.get("event")) == event.pk for _id, f in entries)


def test_one_hint_for_a_group_reaches_the_sockets_as_one_hint_per_event(token_id):
    from dashboard.live.consumers import unpacked

    message = {
        "type": "events.ingested",
        "events": [{"event": 1, "event_type": "a"}, {"event": 2, "event_type": "b"}],
    }

    assert unpacked(message) == [
        {"type": "event.ingested", "event": 1, "event_type": "a"},
        {"type": "event.ingested", "event": 2, "event_type": "b"},
    ]
    assert unpacked({"type": "run.changed", "run": 3}) == [{"type": "run.changed", "run": 3}]


def test_a_group_with_nothing_to_check_is_one_statement_and_its_own_commit(token_id):
    committer = GroupCommitter()
    commit_once(committer, submission(token_id, "o-0"))  # leaves a publication mark

    with CaptureQueriesContext(connection) as queries:
        futures = commit_once(committer, *(submission(token_id, f"o-{n}") for n in range(1, 6)))

    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 1, statements  # no BEGIN, SAVEPOINT or COMMIT round trips
    assert not connection.in_atomic_block
    assert [f.result().accepted[0].duplicate for f in futures] == [False] * 5
    assert Event.objects.filter(ce_id__startswith="o-", published_at__isnull=True).count() == 5


def test_an_event_row_is_built_with_every_field_django_would_give_it():
    envelope = from_structured(cloudevent(id="row-1", subject="s", traceparent="x"))

    built = event_intake.new_event(envelope, None, "http")
    django_built = Event(
        **{
            f.attname: getattr(built, f.attname)
            for f in Event._meta.concrete_fields
            if f.attname not in ("id", "received_at", "published_at", "matched_at")
        }
    )

    for field in Event._meta.concrete_fields:
        assert getattr(built, field.attname) == getattr(django_built, field.attname), field
    assert built._state.adding and built._state.db is None
    built.save(force_insert=True)  # and it saves as one
    assert Event.objects.get(ce_id="row-1").extensions["correlationid"] == "row-1"


def test_live_hints_of_groups_close_together_go_out_together(token_id, monkeypatch):
    from workflows.events import group_commit

    sent: list[list[str]] = []
    hinted = threading.Event()

    def record(*, events):
        sent.append([e.ce_id for e in events])
        hinted.set()

    monkeypatch.setattr(group_commit.notify, "events_ingested", record)
    monkeypatch.setattr(group_commit, "HINT_INTERVAL_SECONDS", 3600)
    committer = GroupCommitter()

    commit_once(committer, submission(token_id, "h-1"))  # after a quiet spell: at once
    commit_once(committer, submission(token_id, "h-2"))  # within the interval: held
    commit_once(committer, submission(token_id, "h-3"))
    assert sent == [["h-1"]]

    # Once the interval is up the held ones go out in one hint, though no group follows.
    hinted.clear()
    monkeypatch.setattr(group_commit, "HINT_INTERVAL_SECONDS", 0.01)
    taken: list = []
    waiting = threading.Thread(target=lambda: taken.append(committer._take()), daemon=True)
    waiting.start()
    assert hinted.wait(30)
    assert sent == [["h-1"], ["h-2", "h-3"]]
    committer.submit(submission(token_id, "h-4"))  # lets the waiting _take return
    waiting.join(30)
    assert len(taken[0]) == 1


def test_ingest_answers_503_when_the_store_does_not_answer_in_time(token_id, settings, monkeypatch):
    # A database gone silent (a black-holed network, tests/chaos network-faults) held every
    # request for as long as the silence lasted, with no 503 and no Retry-After.
    import asyncio
    import json

    from workflows.api import fast_events

    class Silent:
        def submit_async(self, submission):
            return asyncio.get_running_loop().create_future()  # never resolved

    monkeypatch.setattr(fast_events, "committer", Silent)
    settings.SIGNALBOX_INGEST_STORE_TIMEOUT_SECONDS = 0.2
    _token, plaintext = create_api_token(name="silent", role="editor")
    identify(plaintext)  # cached: the request's lookup needs no connection of its own
    headers = fast_events.Headers({"authorization": f"Bearer {plaintext}"})
    body = json.dumps(cloudevent(id="silent-1")).encode()
    ingest = fast_events.FastEventIngest(app=None)
    status, payload, extra = asyncio.run(ingest._accept({}, headers, fast_events.STRUCTURED, body))
    assert status == 503 and (b"retry-after", b"1") in extra
    assert payload["status"] == 503


def test_after_the_bus_refuses_an_append_the_next_groups_leave_it_to_the_relay(
    token_id, monkeypatch
):
    # A silent Redis held every group for the client's socket timeout (network-faults).
    calls = []
    monkeypatch.setattr(bus, "append_new", lambda events: calls.append(events) and False)
    committer = GroupCommitter()
    commit_once(committer, submission(token_id, "away-1"))
    [future] = commit_once(committer, submission(token_id, "away-2"))

    assert len(calls) == 1 and future.result().accepted
    assert Event.objects.filter(published_at__isnull=True).count() == 2  # the relay's now
