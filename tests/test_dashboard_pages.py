"""The live dashboard's pages as a signed-in browser gets them before any socket speaks:
overview, runs with filters and pages, run detail (graph, timeline, attempts, journal,
links, masking), the live flow, lineage and the workers page; and who may see what."""

from __future__ import annotations

import re
from datetime import timedelta
from itertools import pairwise
from urllib.parse import parse_qsl

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from tests.factories import definition, log_step
from tests.runs_here import drive, publish, trigger
from workflows.access.roles import ensure_groups
from workflows.access.secrets import MASK, set_secret
from workflows.catalog.models import Workflow
from workflows.demo import traffic as demo_traffic
from workflows.events.models import Event
from workflows.queries import run_list
from workflows.runs.matching import match_event
from workflows.runs.models import Run


def signed_in(client, role: str | None, *, groups: tuple[str, ...] = ()):
    ensure_groups()
    user = get_user_model().objects.create_user(f"{role or 'nobody'}-{len(groups)}", password="x")
    for name in ((role,) if role else ()) + groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    client.force_login(user)
    return client


@pytest.fixture
def viewer(client, db):
    return signed_in(client, "viewer")


@pytest.fixture
def operator(client, db):
    return signed_in(client, "operator")


def emit_step(step_id: str, event_type: str, *, after: tuple[str, ...] = ()) -> dict:
    step = {"id": step_id, "kind": "emit_event", "config": {"type": event_type, "data": {"n": 1}}}
    if after:
        step["after"] = list(after)
    return step


@pytest.fixture
def chain(db) -> Run:
    """An order run that emits a payment event, which starts a second workflow's run."""
    publish(
        "orders",
        definition(
            log_step("received"), emit_step("announce", "com.example.paid", after=("received",))
        ),
    )
    publish("payments", definition(log_step("book"), event="com.example.paid"))
    run = drive(trigger("orders", {"order": 5}))
    paid = Event.objects.get(type="com.example.paid")
    for started in match_event(event_id=paid.pk):  # what the bus consumer does
        drive(started)
    return run


# --- overview ---------------------------------------------------------------------------------
def test_the_overview_shows_figures_charts_and_the_live_socket(viewer, chain):
    response = viewer.get("/overview/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-live-socket="/ws/overview/?window=15m"' in html
    assert 'id="overview-data"' in html and 'id="chart-events"' in html
    assert "uPlot-1.6.32.iife.min.js" in html
    assert re.search(r'id="figure-dead-letters"><span class="value" data-value="0"', html)
    # A viewer sees the demo state but not the switch.
    assert 'id="demo-switch"' not in html


def test_only_an_operator_may_switch_demo_traffic(viewer, db):
    refused = viewer.post("/overview/demo-traffic/", {"on": "1"})

    assert refused.status_code == 403
    assert not demo_traffic.state().on


def test_an_operator_switches_demo_traffic_on_and_off_from_the_overview(operator):
    page = operator.get("/overview/").content.decode()
    assert 'id="demo-switch"' in page and "Turn demo traffic on" in page

    on = operator.post("/overview/demo-traffic/", {"on": "1"}, follow=True)
    try:
        assert demo_traffic.state().on
        assert demo_traffic.state().by.startswith("operator")
        assert "Turn demo traffic off" in on.content.decode()
    finally:
        # The button posts with htmx (pushed frames carry no CSRF token) and gets the figures.
        off = operator.post("/overview/demo-traffic/", {"on": "0"}, HTTP_HX_REQUEST="true")
    assert not demo_traffic.state().on
    assert off.content.decode().startswith('<div id="overview-figures"')
    assert "Turn demo traffic on" in off.content.decode()


# --- runs ----------------------------------------------------------------------------------------
def run_ids(response) -> list[int]:
    return run_ids_in(response.content.decode())


def run_ids_in(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="run-(\d+)"', html)]


def test_the_runs_page_filters_by_workflow_status_correlation_and_event_text(viewer, chain):
    paid = Run.objects.get(workflow__slug="payments")
    other = trigger("orders", {"order": 99, "note": "gift wrap"})

    assert run_ids(viewer.get("/runs/")) == [other.pk, paid.pk, chain.pk]
    assert run_ids(viewer.get("/runs/", {"workflow": "payments"})) == [paid.pk]
    assert run_ids(viewer.get("/runs/", {"status": "succeeded"})) == [paid.pk, chain.pk]
    assert run_ids(viewer.get("/runs/", {"correlation_id": chain.correlation_id})) == [
        paid.pk,
        chain.pk,
    ]
    assert run_ids(viewer.get("/runs/", {"q": "gift"})) == [other.pk]
    assert run_ids(viewer.get("/runs/", {"q": "nothing like it"})) == []


def test_a_text_search_reads_a_window_of_events_and_links_the_next_one_down(
    viewer, chain, monkeypatch
):
    monkeypatch.setattr(run_list, "TEXT_SEARCH_EVENTS", 2)
    older = trigger("orders", {"order": 1, "note": "gift"})
    for n in (2, 3):  # newer events (and the runs' own events) above it
        trigger("orders", {"order": n, "note": "plain"})
    newest = Event.objects.latest("id").pk

    params, pages, bounds = {"q": "gift"}, [], []
    while len(pages) < 30:
        html = viewer.get("/runs/", params).content.decode()
        pages.append(run_ids_in(html))
        found = re.search(r'href="/runs/\?([^"]*)" id="search-further"', html)
        if pages[-1] or found is None:
            break
        params = dict(parse_qsl(found.group(1).replace("&amp;", "&")))
        bounds.append(int(params["search_below"]))

    assert pages[-1] == [older.pk] and not any(pages[:-1])
    assert bounds[0] == newest + 1 - 2  # the newest two events were read first
    assert all(b - a == -2 for a, b in pairwise(bounds))  # the windows meet
    assert "Text search read events" in html


def test_the_runs_page_filters_by_creation_time(viewer, chain):
    later = trigger("orders", {"order": 2})
    Run.objects.filter(pk=chain.pk).update(created_at=timezone.now() - timedelta(hours=2))
    cut = (timezone.now() - timedelta(hours=1)).isoformat()

    newer = run_ids(viewer.get("/runs/", {"after": cut}))
    older = run_ids(viewer.get("/runs/", {"before": cut}))

    assert later.pk in newer and chain.pk not in newer
    assert older == [chain.pk]


def test_the_runs_page_pages_by_keyset_and_says_what_filter_it_left_out(viewer, chain):
    for n in range(4):
        trigger("orders", {"order": n})
    first = viewer.get("/runs/", {"limit": 2})
    ids = run_ids(first)
    assert len(ids) == 2
    older = re.search(r'rel="next" href="/runs/\?([^"]+)"', first.content.decode())
    assert older, "a next page link"

    second = viewer.get("/runs/?" + older.group(1).replace("&amp;", "&"))

    assert run_ids(second)[0] < ids[-1]
    assert "before_id" in second.context["socket_url"]
    bad = viewer.get("/runs/", {"status": "sideways"})
    assert bad.status_code == 200
    assert 'id="run-filter-errors"' in bad.content.decode()


def test_a_workflow_of_another_team_is_neither_listed_nor_shown(client, chain):
    Workflow.objects.filter(slug="payments").update(team=Group.objects.create(name="finance"))
    paid = Run.objects.get(workflow__slug="payments")
    outsider = signed_in(client, "viewer")

    assert paid.pk not in run_ids(outsider.get("/runs/"))
    # 404 as for a run that does not exist, as the API answers: 403 would reveal it.
    assert outsider.get(f"/runs/{paid.pk}/").status_code == 404
    assert outsider.get("/runs/", {"workflow": "payments"}).status_code == 404


def test_a_team_member_sees_the_team_workflow(client, chain):
    Workflow.objects.filter(slug="payments").update(team=Group.objects.create(name="finance"))
    paid = Run.objects.get(workflow__slug="payments")
    member = signed_in(client, "viewer", groups=("finance",))

    assert paid.pk in run_ids(member.get("/runs/"))
    assert member.get(f"/runs/{paid.pk}/").status_code == 200


# --- run detail ---------------------------------------------------------------------------------
def test_the_run_detail_draws_the_graph_timeline_attempts_journal_and_links(viewer, chain):
    response = viewer.get(f"/runs/{chain.pk}/")

    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-live-socket="/ws/runs/' in html
    assert re.search(r'id="node-received" data-state="succeeded"', html)
    assert re.search(r'id="node-announce" data-state="succeeded"', html)
    assert 'class="edge taken" data-from="received" data-to="announce"' in html
    assert html.count('class="timeline-row"') == 2
    assert 'class="bar bar-running bar-status-succeeded"' in html
    assert 'id="step-detail-announce"' in html
    assert f"{chain.pk}" in html and 'class="worker">tests<' in html
    assert 'class="idempotency-key">' in html
    journal = re.search(r'id="run-journal">(.*?)</table>', html, re.S).group(1)
    assert "<code>run.started</code>" in journal and "<code>step.started</code>" in journal
    paid = Run.objects.get(workflow__slug="payments")
    emitted = re.search(r'id="run-emitted">(.*?)</div>', html, re.S).group(1)
    assert "com.example.paid" in emitted and "signalbox.run.succeeded" in emitted
    assert f'href="/events/{chain.event_id}/lineage/"' in html
    assert paid.event_id != chain.event_id


def test_secrets_are_masked_in_the_run_detail_even_when_set_after_the_run(viewer, db):
    publish(
        "leaky",
        definition(
            {"id": "say", "kind": "log", "config": {"message": "token {{ event.data.token }}"}}
        ),
    )
    run = drive(trigger("leaky", {"token": "hunter2-secret"}))
    set_secret(name="api-token", value="hunter2-secret")

    html = viewer.get(f"/runs/{run.pk}/").content.decode()

    assert "hunter2-secret" not in html
    assert MASK in html


# --- flow, lineage, workers -----------------------------------------------------------------------
def test_the_flow_page_passes_its_filters_to_the_socket(viewer, db):
    html = viewer.get("/flow/", {"type": "com.example.paid", "q": "x y"}).content.decode()

    assert 'data-live-socket="/ws/flow/?type=com.example.paid&amp;q=x+y"' in html
    assert 'data-live-resume="#flow-status"' in html
    assert 'id="flow-pause"' in html


def test_the_lineage_of_an_event_shows_runs_and_what_they_emitted(viewer, chain):
    paid = Run.objects.get(workflow__slug="payments")

    html = viewer.get(f"/events/{chain.event_id}/lineage/").content.decode()
    panel = viewer.get(f"/flow/events/{chain.event_id}/").content.decode()

    for page in (html, panel):
        assert f'id="lineage-node-run-{chain.pk}"' in page
        assert f'id="lineage-node-run-{paid.pk}"' in page
        assert f'id="lineage-node-event-{paid.event_id}"' in page
        assert f'data-from="run-{chain.pk}" data-to="event-{paid.event_id}"' in page
        assert f'data-from="event-{paid.event_id}" data-to="run-{paid.pk}"' in page
        assert f'data-live-socket="/ws/lineage/{chain.event_id}/"' in page


def test_the_lineage_of_an_emitted_event_is_drawn_from_the_start_of_its_chain(viewer, chain):
    paid = Run.objects.get(workflow__slug="payments")

    html = viewer.get(f"/events/{paid.event_id}/lineage/").content.decode()

    assert f'id="lineage-node-event-{chain.event_id}"' in html
    assert f'id="lineage-node-run-{chain.pk}"' in html
    assert f'class="node lineage-event focus" id="lineage-node-event-{paid.event_id}"' in html
    assert "Drawn from the event that started this chain" in html


def test_the_workers_page_lists_queues_partitions_and_circuits(viewer, db):
    html = viewer.get("/system/").content.decode()

    assert 'data-live-socket="/ws/system/"' in html
    assert 'id="system-queues"' in html and 'data-queue="signalbox"' in html
    assert html.count('data-partition="') == 4
    assert 'id="system-circuits"' in html


def test_the_workers_page_never_waits_for_the_workers_to_answer(viewer, db, monkeypatch):
    """Asking Celery's workers waits a whole timeout; the page shows the last answer (none
    yet: "asking") and leaves the fresh one to the socket's first frame."""
    from dashboard import metrics, system_views

    metrics.cache.clear()
    asked = []
    monkeypatch.setattr(system_views, "celery_workers", lambda: asked.append(1) or ([], ""))

    html = viewer.get("/system/").content.decode()

    assert asked == []
    assert "Asking the workers…" in html and "data-asking" in html

    worker = {"name": "w1@here", "pid": 7, "uptime": 3, "concurrency": 2, "processed": 0,
              "queues": ["signalbox"], "active": []}  # fmt: skip
    monkeypatch.setattr(system_views, "celery_workers", lambda: ([worker], ""))
    system_views.system_context()  # what the socket renders

    html = viewer.get("/system/").content.decode()

    assert 'data-worker="w1@here"' in html and "data-asking" not in html


def test_asking_the_workers_puts_the_three_questions_side_by_side(monkeypatch):
    """The three inspect broadcasts each wait the whole timeout: asked one after another
    the page took three seconds. Each question here waits until all three are in flight."""
    import threading

    from celery.app.control import Inspect

    from dashboard import system_views

    in_flight = threading.Barrier(3, timeout=10)

    def answer(reply):
        def ask(self):
            in_flight.wait()  # broken (an error) unless the three are asked together
            return reply

        return ask

    monkeypatch.setattr(Inspect, "stats", answer({"w1": {"pid": 7, "pool": {}}}))
    monkeypatch.setattr(Inspect, "active", answer({"w1": []}))
    monkeypatch.setattr(Inspect, "active_queues", answer({"w1": [{"name": "signalbox"}]}))

    workers, error = system_views.celery_workers()

    assert error == ""
    assert [(w["name"], w["queues"]) for w in workers] == [("w1", ["signalbox"])]
