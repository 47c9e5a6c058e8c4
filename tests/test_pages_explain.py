"""The dashboard pages that were slow at a million runs read along indexes: the overview in
every time range, the bulk replay page with each of its filters (its error text through the
failed runs' trigram index) and its dry run (exact counts from narrow reads, one page of
rows), the run list's text search (one bounded window of events a page, and the next), and
an event's lineage. Each page is requested through the test client (as an admin, and as a
user from whom a team's workflow is hidden) and every query it ran on the runs or events
table is EXPLAINed: no Seq Scan of either, and the overview reads the last minutes' events
only (the rest from its per-minute rollups). No wall-clock time is asserted; bench/pages.py
measures the pages' server time on the same data (tests/million_runs.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from dashboard import metrics
from tests.accounts import sign_in
from workflows.catalog.models import Workflow
from workflows.events.models import Event
from workflows.queries import event_rollups
from workflows.queries.models import EventRollup
from workflows.queries.run_list import TEXT_SEARCH_EVENTS
from workflows.runs.models import Run

BIG_TABLES = ("workflows_run", "workflows_event")
ACTUAL_ROWS = re.compile(
    r" on (workflows_event|workflows_run)\b.*actual time=\S+ rows=(\d+) loops=(\d+)"
)
# The last three minutes hold 1,800 of the fixture's events (ten a second); six hours of
# them, 216,000.
OVERVIEW_EVENT_ROWS = 10_000


# The first test to ask for the million rows makes them (tests/million_runs.py): 40 to 80 s
# on a quiet machine, minutes on a busy shared one; the suite's 180 s would cut it short.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def rolled_up(million_runs, django_db_blocker):
    """What the scheduler keeps as events arrive (workflows.queries.event_rollups)."""
    with django_db_blocker.unblock():
        # A scheduler running meanwhile (the session's stack) may have marked these minutes
        # rolled up before the rows were loaded into the past: start again from none.
        EventRollup.objects.all().delete()
        event_rollups.catch_up()
        yield million_runs
        EventRollup.objects.all().delete()


@pytest.fixture
def clients(rolled_up, db):
    """An admin, and an operator outside the team that keyset-1 is restricted to."""
    finance = Group.objects.create(name="finance")
    Workflow.objects.filter(slug=rolled_up[1]).update(team=finance)
    return {
        "admin": sign_in(Client(), "explain-admin", "admin"),
        "team": sign_in(Client(), "explain-outsider", "operator"),
    }


def explained(client: Client, url: str) -> tuple[list[str], list[str]]:
    """GET `url` (the overview's cache emptied); returns every SELECT it ran on a big table,
    and their EXPLAIN ANALYZE plans."""
    captured: list[tuple[str, object]] = []

    def capture(execute, sql, params, many, context):
        captured.append((sql, params))
        return execute(sql, params, many, context)

    metrics.cache.clear()
    with connection.execute_wrapper(capture):
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    queries, plans = [], []
    with connection.cursor() as cursor:
        for sql, params in captured:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            if not any(table in sql for table in BIG_TABLES):
                continue
            cursor.execute("EXPLAIN ANALYZE " + sql, params)
            queries.append(sql)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    return queries, plans


def assert_no_seq_scan(plans: list[str], what: str) -> None:
    for text in plans:
        for table in BIG_TABLES:
            assert f"Seq Scan on {table}" not in text, f"{what}: sequential scan\n{text}"


def rows_read(plans: list[str], table: str) -> int:
    total = 0
    for text in plans:
        for line in text.splitlines():
            found = ACTUAL_ROWS.search(line)
            if found and found.group(1) == table:
                total += int(found.group(2)) * int(found.group(3))
    return total


@pytest.mark.parametrize("window", ["15m", "1h", "6h"])
@pytest.mark.parametrize("who", ["admin", "team"])
def test_the_overview_counts_from_rollups_and_the_last_minutes_only(clients, window, who):
    _queries, plans = explained(clients[who], f"/overview/?window={window}")
    assert_no_seq_scan(plans, f"overview {window} ({who})")
    read = rows_read(plans, "workflows_event")
    assert read <= OVERVIEW_EVENT_ROWS, f"overview {window} read {read:,} events\n" + "\n".join(
        plans
    )
    # The figures still count the whole window: six hours hold 216,000 of the events.
    data = metrics.compute_overview(window)
    if window == "6h":
        assert data.figures["events_in_window"] >= 200_000


def _at(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S")


def replay_pages(slugs: list[str]) -> dict[str, str]:
    newest_failed = Run.objects.filter(status="failed").order_by("-id")[:5]
    ticked = "&".join(f"run={r.pk}" for r in newest_failed)
    return {
        "failed runs": "/replays/",
        "a workflow": f"/replays/?workflow={slugs[0]}",
        "a workflow's version": f"/replays/?workflow={slugs[2]}&version=1",
        "error text": "/replays/?error=HTTP+502",
        "finished 2-3 h ago": f"/replays/?after={_at(3)}&before={_at(2)}",
        "every filter": f"/replays/?workflow={slugs[0]}&error=50&after={_at(20)}",
        "ticked runs, dry run": f"/replays/?{ticked}&dry_run=1",
        "a workflow, dry run": f"/replays/?workflow={slugs[0]}&dry_run=1",
    }


@pytest.mark.parametrize("who", ["admin", "team"])
def test_the_bulk_replay_page_reads_failed_runs_along_indexes(clients, rolled_up, who):
    for name, url in replay_pages(rolled_up).items():
        queries, plans = explained(clients[who], url)
        assert_no_seq_scan(plans, f"replays: {name} ({who})")
        # A dry run of a thousand runs reads their steps in one query, not one per run.
        assert len(queries) <= 12, f"replays: {name}: {len(queries)} queries"


@pytest.mark.parametrize("who", ["admin", "team"])
def test_a_full_batch_dry_run_counts_every_run_and_shows_one_page_of_them(clients, rolled_up, who):
    url = f"/replays/?workflow={rolled_up[0]}&dry_run=1"
    with CaptureQueriesContext(connection) as captured:
        html = clients[who].get(url).content.decode()
    # Every run of the batch is checked (the counts are exact), with narrow reads: the runs'
    # few fields and their attempts' statuses, not model instances with prefetched steps.
    assert '<strong id="bulk-will-start">1000</strong> of 1000 will start' in html
    assert '<strong id="bulk-will-not-start">0</strong>' in html
    assert 'id="bulk-over-cap"' in html  # 2,500 of its runs failed: a batch takes 1,000
    assert html.count('id="bulk-check-') == 50
    assert "And 950 more" in html
    steps_read = [q["sql"] for q in captured if 'FROM "workflows_steprun"' in q["sql"]]
    assert len(steps_read) == 2, steps_read  # every run's attempts, then one run's steps
    assert len(captured) <= 20, [q["sql"] for q in captured]
    # The next page of rows goes on from the last run shown, and the counts stay the same.
    next_url = re.search(r'href="(/replays/\?[^"]*checks_after=\d+[^"]*)"', html).group(1)
    following = clients[who].get(next_url.replace("&amp;", "&")).content.decode()
    assert '<strong id="bulk-will-start">1000</strong> of 1000 will start' in following
    assert following.count('id="bulk-check-') == 50 and "50 run(s) before these" in following
    assert not set(re.findall(r'id="bulk-check-(\d+)"', html)) & set(
        re.findall(r'id="bulk-check-(\d+)"', following)
    )


def test_the_error_text_filter_reads_the_failed_runs_it_matches_through_a_trigram_index(clients):
    queries, plans = explained(clients["admin"], "/replays/?error=HTTP+502")
    assert_no_seq_scan(plans, "replays: error text")
    searched = [p for q, p in zip(queries, plans, strict=True) if "LIKE UPPER" in q]
    assert searched and all("run_failed_error_trgm" in p for p in searched), "\n".join(plans)
    # A quarter of the 10,000 failed runs say "HTTP 502": those are read, not all of them.
    assert rows_read(searched, "workflows_run") <= 2 * 2_500, "\n".join(searched)


def test_a_text_search_reads_one_window_of_events_and_offers_the_next(clients):
    newest = Event.objects.order_by("-id").first().pk
    _queries, plans = explained(clients["admin"], "/runs/?q=needle")
    assert_no_seq_scan(plans, "runs: text")
    assert rows_read(plans, "workflows_event") <= TEXT_SEARCH_EVENTS + 100, "\n".join(plans)
    html = clients["admin"].get("/runs/?q=needle").content.decode()
    lower = newest + 1 - TEXT_SEARCH_EVENTS
    assert f"search_below={lower}" in html and 'id="search-further"' in html
    # The next window, far back, reads as few events and says where it stopped.
    deep = f"/runs/?q=needle&search_below={newest // 2}"
    _queries, plans = explained(clients["admin"], deep)
    assert_no_seq_scan(plans, "runs: text, further back")
    assert rows_read(plans, "workflows_event") <= TEXT_SEARCH_EVENTS + 100, "\n".join(plans)
    further = clients["admin"].get(deep).content.decode()
    assert f"search_below={newest // 2 - TEXT_SEARCH_EVENTS}" in further


def test_an_events_lineage_reads_along_indexes(clients):
    newest = Event.objects.order_by("-id").first()
    _queries, plans = explained(clients["admin"], f"/events/{newest.pk}/lineage/")
    assert_no_seq_scan(plans, "lineage")
    assert rows_read(plans, "workflows_event") < 100, "\n".join(plans)
