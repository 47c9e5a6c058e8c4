"""The runs page stays fast at a million runs: every filter combination it offers is planned
by PostgreSQL as index scans, never a sequential scan of the runs or events tables.

A million runs (and their trigger events) are made with generate_series in the test
database (tests/million_runs.py, shared with tests/test_pages_explain.py), ANALYZEd, and
each query the page runs is EXPLAINed (and timed with EXPLAIN ANALYZE for the record in
docs/dashboard.md). The rows are removed at the end of the session."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl

import pytest
from django.db import connection
from django.utils import timezone

from tests.million_runs import RUNS, WORKFLOWS
from workflows.catalog.models import Workflow
from workflows.events.models import Event
from workflows.queries import dashboard as ds
from workflows.runs.models import Run

# The first test to ask for the million rows makes them (tests/million_runs.py): 40 to 80 s
# on a quiet machine, minutes on a busy shared one; the suite's 180 s would cut it short.
pytestmark = pytest.mark.timeout(900)


def plan(qs) -> str:
    return qs.explain()


def _execution_ms(text: str) -> float:
    return float(text.rsplit("Execution Time: ", 1)[1].split(" ms")[0])


def timed_plan(qs) -> tuple[str, float]:
    text = qs.explain(analyze=True)
    return text, _execution_ms(text)


BIG_TABLES = ("workflows_run", "workflows_event")


def assert_index_only(text: str, what: str) -> None:
    """No sequential scan of a big table (a handful of workflows may be scanned whole)."""
    for table in BIG_TABLES:
        assert f"Seq Scan on {table}" not in text, f"{what}: sequential scan of {table}\n{text}"
    assert "Index" in text, f"{what}: no index used\n{text}"


def cases(slugs: list[str]) -> dict[str, dict]:
    now = timezone.now()
    # Each page of text search reads one window of events (TEXT_SEARCH_EVENTS): the window
    # that holds a needle, as the page's "search further back" link would reach it.
    needles = Event.objects.filter(source="/keyset", data__note="needle").order_by("-id")
    newest_needle = needles.values_list("id", flat=True)[0]
    earlier_needle = needles.filter(received_at__lt=now - timedelta(hours=2))
    earlier_needle = earlier_needle.values_list("id", flat=True)[0]
    return {
        "newest page": {},
        "workflow": {"workflow": slugs[1]},
        "status": {"status": "failed"},
        "workflow and status": {"workflow": slugs[0], "status": "failed"},
        # The worst case: the workflow's index is read to its end, as no run matches.
        "workflow, a status it never has": {"workflow": slugs[2], "status": "failed"},
        "last hour": {"after": (now - timedelta(hours=1)).isoformat()},
        "a day ago, one hour": {
            "after": (now - timedelta(hours=25)).isoformat(),
            "before": (now - timedelta(hours=24)).isoformat(),
        },
        "workflow in a time range": {
            "workflow": slugs[0],
            "after": (now - timedelta(hours=20)).isoformat(),
            "before": (now - timedelta(hours=19)).isoformat(),
        },
        "status in a time range": {
            "status": "running",
            "before": (now - timedelta(hours=10)).isoformat(),
        },
        "correlation id": {"correlation_id": "conv-123456"},
        "correlation id and status": {"correlation_id": "conv-123456", "status": "succeeded"},
        "text in the trigger event": {"q": "needle", "search_below": str(newest_needle + 1)},
        "text in a time range": {
            "q": "needle",
            "search_below": str(earlier_needle + 1),
            "after": (now - timedelta(hours=27)).isoformat(),
            "before": (now - timedelta(hours=2)).isoformat(),
        },
        "deep page": {"before_id": "500000"},
        "deep page of a workflow": {"workflow": slugs[3], "before_id": "400000"},
        "deep page of a status": {"status": "failed", "before_id": "300000"},
    }


@pytest.mark.django_db
def test_every_run_filter_uses_indexes_at_a_million_runs(million_runs, capsys):
    assert Run.objects.count() >= RUNS
    timings = []
    for name, params in cases(million_runs).items():
        query, errors = ds.parse_run_query(params)
        assert not errors, (name, errors)
        with connection.execute_wrapper(_collect_plans(name)):
            qs, _notes = ds.runs_queryset(query)
            page = qs[: query.limit + 1]
            text, ms = timed_plan(page)
        assert_index_only(text, name)
        helpers = _collected.pop(name, [])
        for sub in helpers:
            assert_index_only(sub, f"{name} (helper query)")
        helper_ms = sum(_execution_ms(sub) for sub in helpers)
        timings.append((name, ms, helper_ms, len(helpers), len(list(page))))
    with capsys.disabled():
        print("\nkeyset run filters at 1,000,000 runs (EXPLAIN ANALYZE execution time):")
        for name, ms, helper_ms, helpers, rows in timings:
            print(
                f"  {name:<34} page {ms:8.2f} ms  {rows:3d} rows;"
                f"  {helpers:2d} helper queries {helper_ms:8.2f} ms"
            )


def test_the_text_search_and_time_bounds_find_the_rows_they_promise(million_runs, db):
    # One needle per 50,000 events; each page of search reads TEXT_SEARCH_EVENTS of them and
    # offers the next window down: following it finds the newest needle, and no needle is
    # skipped on the way (the windows meet).
    params: dict = {"q": "needle"}
    newest_needle = Event.objects.filter(source="/keyset", data__note="needle").latest("id")
    for _ in range(50_000 // ds.TEXT_SEARCH_EVENTS + 2):
        needle_runs, notes = ds.runs_queryset(ds.parse_run_query(params)[0])
        found = list(needle_runs[:10])
        if found:
            break
        further = [n.further for n in notes if n.further]
        assert further, [str(n) for n in notes]
        params = dict(parse_qsl(further[0]))
    assert found and all(r.event.data["note"] == "needle" for r in found)
    assert found[0].event_id == newest_needle.pk

    now = timezone.now()
    after, before = now - timedelta(hours=25), now - timedelta(hours=24)
    window, _ = ds.runs_queryset(
        ds.parse_run_query({"after": after.isoformat(), "before": before.isoformat()})[0]
    )
    rows = list(window[:60])
    assert len(rows) == 60  # an hour holds 36,000 runs here
    assert all(after <= r.created_at < before for r in rows)
    assert rows[0].created_at > rows[-1].created_at  # newest first


def test_a_time_bound_becomes_an_id_bound_in_a_few_index_lookups(million_runs, db):
    middle = Event.objects.filter(source="/keyset").order_by("id")[RUNS // 2]
    with connection.execute_wrapper(_count_queries):
        _queries.clear()
        found = ds.first_id_at_or_after(Run, "created_at", middle.received_at)
    assert Run.objects.get(pk=found).created_at >= middle.received_at
    assert Run.objects.filter(pk__lt=found, created_at__gte=middle.received_at).count() == 0
    assert len(_queries) <= 25, len(_queries)


EMITTED = 100_000


@pytest.fixture
def emitted_events(million_runs, db):
    """Events the newest runs emitted, newer than the million: half say whose they are
    (sbworkflow), half are known by their source only (emitted before steps said so)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_event (source, ce_id, type, subject, specversion,
                datacontenttype, dataschema, data, data_is_base64, extensions,
                correlation_id, causation_id, validation, channel, received_at)
            SELECT '/signalbox/runs/' || r.id, 'emitted-' || r.id, 'com.example.shipped', '',
                '1.0', 'application/json', '', '{}'::jsonb, false,
                CASE WHEN r.id %% 2 = 0 THEN jsonb_build_object('sbworkflow', w.slug)
                     ELSE '{}'::jsonb END,
                r.correlation_id, '', 'unvalidated', 'run', now()
            FROM workflows_run r JOIN workflows_workflow w ON w.id = r.workflow_id
            WHERE w.slug = ANY(%(slugs)s) ORDER BY r.id DESC LIMIT %(n)s
            """,
            {"slugs": million_runs, "n": EMITTED},
        )
        cursor.execute("ANALYZE workflows_event")
    yield million_runs
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM workflows_event WHERE ce_id LIKE 'emitted-%%'")


def test_the_event_list_hiding_a_teams_events_reads_along_indexes(emitted_events, capsys):
    """One team's workflow is hidden: its run-emitted events are left out per row as the
    id (or type, source, correlation) index is read, never by scanning the table."""
    from workflows.queries import events as store

    hidden = frozenset(Workflow.objects.filter(slug=emitted_events[1]).values_list("pk", flat=True))
    newest_run = Run.objects.filter(workflow__slug=emitted_events[1]).latest("id")
    timings = []
    for name, params in {
        "newest page": {},
        "a type": {"type": "com.example.shipped"},
        "a hidden run's source": {"source": f"/signalbox/runs/{newest_run.pk}"},
        "a correlation id": {"correlation_id": newest_run.correlation_id},
        "deep page": {"before_id": "500000"},
    }.items():
        with connection.execute_wrapper(_collect_plans(name)):
            rows, _more = store.events(store.parse_event_query(params), hidden=hidden)
        (text,) = _collected.pop(name)  # the page query, explained and timed
        ms = _execution_ms(text)
        assert_index_only(text, name)
        # An event's run is found by its primary key, row by row; never a hash built from
        # every run of the hidden workflow (which grows with that workflow's history).
        runs_read = [line for line in text.splitlines() if " on workflows_run " in line]
        assert all("workflows_run_pkey" in line for line in runs_read), f"{name}\n{text}"
        assert not any(e.source == f"/signalbox/runs/{newest_run.pk}" for e in rows)
        timings.append((name, ms, len(rows)))
    shown, _more = store.events(store.parse_event_query({}), hidden=hidden)
    assert len(shown) == store.PAGE_SIZE
    assert not Run.objects.filter(
        workflow_id__in=hidden, pk__in=[int(e.source.rsplit("/", 1)[1]) for e in shown]
    ).exists()
    with capsys.disabled():
        print(f"\nthe event list hiding one of {WORKFLOWS} workflows (EXPLAIN ANALYZE):")
        for name, ms, rows in timings:
            print(f"  {name:<24} {ms:8.2f} ms  {rows:3d} rows")


# --- collecting the helper queries' plans --------------------------------------------------------
_collected: dict[str, list[str]] = {}
_queries: list[str] = []


def _count_queries(execute, sql, params, many, context):
    _queries.append(sql)
    return execute(sql, params, many, context)


def _collect_plans(name: str):
    """Explain every SELECT the filter runs on the runs or events table before the page query
    (id bounds, matching events), so their plans are checked too."""

    def wrapper(execute, sql, params, many, context):
        is_helper = sql.lstrip().upper().startswith("SELECT") and "EXPLAIN" not in sql.upper()
        if is_helper and ("workflows_run" in sql or "workflows_event" in sql):
            with context["connection"].cursor() as cursor:
                cursor.execute("EXPLAIN ANALYZE " + sql, params)
                _collected.setdefault(name, []).append(
                    "\n".join(row[0] for row in cursor.fetchall())
                )
        return execute(sql, params, many, context)

    return wrapper
