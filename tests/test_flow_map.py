"""The live flow map's traffic: counted in Redis where events are published and runs start
and fail (workflows/infra/flow_counters.py), read back as edges with rates and failures without
a query of events or runs, laid out (dashboard/live/flow_map.py), and shown to each viewer
without another team's workflows; the live flow's `channel` and `workflow` filters that
its edges link to."""

from __future__ import annotations

import itertools
import os
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dashboard.live import flow_map
from tests.factories import cloudevent, definition, log_step
from workflows.access.roles import ensure_groups
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow
from workflows.events import bus
from workflows.events.envelope import from_structured
from workflows.events.models import Event
from workflows.infra import flow_counters
from workflows.infra.redis_client import client as redis_client
from workflows.queries import events as event_selectors
from workflows.runs.execution import Budget
from workflows.runs.matching import dead_letter_bus_entry, ingest_event, match_events
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def private_redis(settings):
    """Counters of this test only: a running stack shares the run's prefix."""
    settings.REDIS_PREFIX = f"{settings.REDIS_PREFIX}-flowmap-{os.getpid()}-{time.time_ns()}"
    yield settings
    for name in redis_client().scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=1000):
        redis_client().delete(name)


def fail_step(step_id: str) -> dict:
    return {"id": step_id, "kind": "fail", "config": {"message": "refused on purpose"}}


def workflow(slug: str, event_type: str, *steps: dict) -> None:
    put_workflow(slug=slug, raw=definition(*steps, event=event_type))
    publish_workflow(slug=slug)


def arrive(event_type: str, *, channel: str = "http", **attributes) -> Event:
    """An event accepted on `channel`, published, and matched by the bus consumer's code
    (light runs run inline, as they do in the consumer)."""
    envelope = from_structured(cloudevent(event_type, **attributes))
    event, _created = ingest_event(envelope=envelope, channel=channel)
    outcome = match_events(event_ids=[event.pk], inline=Budget())
    assert not outcome.failed
    return event


def edges(hidden: frozenset[str] = frozenset()) -> dict[tuple[str, str], tuple[int, int]]:
    found = flow_counters.traffic(flow_counters.read_window(), hidden_slugs=hidden)
    return {
        **{
            (f"channel:{c}", f"type:{t}"): (e.count, e.failed)
            for (c, t), e in found.inbound.items()
        },
        **{(f"type:{t}", f"workflow:{w}"): (e.count, e.failed) for (t, w), e in found.runs.items()},
    }


def test_events_and_the_runs_they_start_and_fail_are_counted_on_their_edges(private_redis):
    workflow("flow-ok", "com.example.flow.ok", log_step("fine"))
    workflow("flow-bad", "com.example.flow.bad", fail_step("boom"))
    for _ in range(3):
        arrive("com.example.flow.ok")
    arrive("com.example.flow.bad", channel="webhook")
    arrive("com.example.flow.bad", channel="webhook")

    found = edges()
    assert found[("channel:http", "type:com.example.flow.ok")] == (3, 0)
    assert found[("type:com.example.flow.ok", "workflow:flow-ok")] == (3, 0)
    # Both runs of flow-bad failed: on the workflow's edge and on the events' edge.
    assert found[("channel:webhook", "type:com.example.flow.bad")] == (2, 2)
    assert found[("type:com.example.flow.bad", "workflow:flow-bad")] == (2, 2)
    # The runs' own events came in too, on the `run` channel.
    assert found[("channel:run", "type:signalbox.run.failed")] == (2, 0)
    assert found[("channel:run", "type:signalbox.run.succeeded")] == (3, 0)


def test_publishing_again_and_replays_are_not_new_traffic(private_redis):
    workflow("flow-once", "com.example.flow.once", log_step("fine"))
    event = arrive("com.example.flow.once")
    before = edges()
    # The outbox relay sending an event again (its bus entry was lost) is no new event,
    # and a redelivered bus entry starts no second run.
    bus._append([event])
    match_events(event_ids=[event.pk], inline=Budget())
    assert edges() == before
    assert before[("channel:http", "type:com.example.flow.once")] == (1, 0)
    assert before[("type:com.example.flow.once", "workflow:flow-once")] == (1, 0)


def test_an_event_dead_lettered_on_the_bus_is_a_failure_of_its_edge(private_redis):
    event = arrive("com.example.flow.poison", channel="connector")
    dead_letter_bus_entry(event_id=event.pk, reason="poison", stream="s", entry_id="1-0")
    assert edges()[("channel:connector", "type:com.example.flow.poison")] == (1, 1)


def test_reading_the_map_asks_the_database_nothing(private_redis):
    workflow("flow-read", "com.example.flow.read", log_step("fine"))
    arrive("com.example.flow.read")
    with CaptureQueriesContext(connection) as queries:
        drawn = flow_map.flow_map()
    assert len(queries) == 0, [q["sql"] for q in queries]
    assert {(e.source.key, e.target.key) for e in drawn.edges} >= {
        ("channel:http", "type:com.example.flow.read"),
        ("type:com.example.flow.read", "workflow:flow-read"),
    }


def test_the_window_is_the_last_five_minutes_and_rates_are_per_minute(private_redis):
    now = 1_800_000_030.0  # 30 s into a minute
    minute = int(now // 60)
    pipe = redis_client().pipeline()
    field = flow_counters.event_field("http", "com.example.flow.rate", "")
    pipe.hincrby(flow_counters.bucket_key(minute), field, 6)
    pipe.hincrby(flow_counters.bucket_key(minute - 4), field, 3)
    pipe.hincrby(flow_counters.bucket_key(minute - 5), field, 100)  # before the window
    pipe.execute()

    window = flow_counters.read_window(now)
    assert window.seconds == 4 * 60 + 30
    drawn = flow_map.build(flow_counters.traffic(window))
    (edge,) = drawn.edges
    assert edge.count == 9
    assert edge.rate == pytest.approx(9 * 60 / 270)
    assert edge.label == "2/min"
    assert edge.href == "?channel=http&type=com.example.flow.rate"


def test_buckets_expire_after_the_window_has_passed_them(private_redis):
    workflow("flow-ttl", "com.example.flow.ttl", log_step("fine"))
    arrive("com.example.flow.ttl")
    names = redis_client().keys(flow_counters.bucket_key("*"))
    assert names  # one, or two when the run's events came in the next minute
    assert all(0 < redis_client().ttl(name) <= flow_counters.BUCKET_TTL for name in names)
    assert flow_counters.BUCKET_TTL > flow_counters.WINDOW_MINUTES * 60


def test_another_teams_workflow_and_the_events_its_runs_emitted_are_left_out(private_redis):
    team = Group.objects.create(name=f"team-{uuid.uuid4().hex[:6]}")
    workflow("flow-secret", "com.example.flow.secret", log_step("fine"))
    workflow("flow-open", "com.example.flow.secret", log_step("fine"))
    Workflow.objects.filter(slug="flow-secret").update(team=team)
    arrive("com.example.flow.secret")

    everything = edges()
    assert ("type:com.example.flow.secret", "workflow:flow-secret") in everything
    seen = edges(frozenset({"flow-secret"}))
    assert ("type:com.example.flow.secret", "workflow:flow-secret") not in seen
    assert seen[("type:com.example.flow.secret", "workflow:flow-open")] == (1, 0)
    # flow-open's run events are there; flow-secret's (same types) are not counted.
    assert seen[("channel:run", "type:signalbox.run.succeeded")] == (1, 0)
    assert everything[("channel:run", "type:signalbox.run.succeeded")] == (2, 0)


def test_the_flow_page_draws_the_map_without_another_teams_workflow(client, private_redis):
    ensure_groups()
    team = Group.objects.create(name=f"team-{uuid.uuid4().hex[:6]}")
    workflow("flow-page-secret", "com.example.flow.page", log_step("fine"))
    workflow("flow-page-open", "com.example.flow.page", fail_step("boom"))
    Workflow.objects.filter(slug="flow-page-secret").update(team=team)
    arrive("com.example.flow.page")
    user = get_user_model().objects.create_user(username="flow-viewer", password="x")
    user.groups.add(Group.objects.get(name="viewer"))
    client.force_login(user)

    page = client.get("/flow/").content.decode()
    assert 'data-to="workflow:flow-page-open"' in page
    assert "flow-page-secret" not in page
    assert (
        'class="flow-edge failing" href="?type=com.example.flow.page&amp;workflow=flow-page-open"'
        in page
    )
    # The same page for a member of the team.
    user.groups.add(team)
    assert 'data-to="workflow:flow-page-secret"' in client.get("/flow/").content.decode()


def test_the_layout_keeps_the_busiest_types_and_says_how_many_it_left_out():
    counts = {("http", f"com.example.t{i:02d}"): flow_counters.EdgeCount(i + 1) for i in range(20)}
    drawn = flow_map.build(flow_counters.Traffic(inbound=counts, runs={}, seconds=300))
    types = [n for n in drawn.nodes if n.column == 1]
    assert len(types) == flow_map.MAX_TYPES
    assert drawn.left_out_types == 20 - flow_map.MAX_TYPES
    assert "type:com.example.t19" in {n.key for n in types}  # the busiest is kept
    assert "type:com.example.t00" not in {n.key for n in types}
    # Nodes of a column never overlap, and every edge goes from one column to the next.
    ys = sorted(n.y for n in types)
    assert all(b - a >= flow_map.NODE_HEIGHT for a, b in itertools.pairwise(ys))
    assert all(e.target.column == e.source.column + 1 for e in drawn.edges)


def test_the_live_flow_filters_by_channel_and_by_workflow(private_redis):
    workflow("flow-filter-a", "com.example.flow.filter", log_step("fine"))
    workflow("flow-filter-b", "com.example.flow.other", log_step("fine"))
    by_http = arrive("com.example.flow.filter")
    by_hook = arrive("com.example.flow.filter", channel="webhook")
    other = arrive("com.example.flow.other")
    waiting = ingest_event(
        envelope=from_structured(cloudevent("com.example.flow.filter")), channel="http"
    )[0]  # not matched yet: its run of flow-filter-a has not started

    qs = Event.objects.filter(pk__in=[by_http.pk, by_hook.pk, other.pk, waiting.pk])
    assert set(qs.filter(channel="webhook")) == {by_hook}
    of_a = event_selectors.events_of_workflow(qs, slug="flow-filter-a")
    assert set(of_a) == {by_http, by_hook, waiting}
    assert Run.objects.filter(event=waiting).count() == 0
    hidden = frozenset(Workflow.objects.filter(slug="flow-filter-a").values_list("id", flat=True))
    assert not event_selectors.events_of_workflow(qs, slug="flow-filter-a", hidden=hidden)
    assert not event_selectors.events_of_workflow(qs, slug="no-such-workflow")
