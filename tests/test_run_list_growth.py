"""The run lists cost the same at any size: the API list reads a page's steps in one query,
filters a workflow through the (workflow, -id) index, and the dashboard's workflow picker
reads a bounded number of slugs. The run list's and run page's queries are planned as index
scans on tables with enough rows (bench/growth.py times them at a million runs)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import definition, log_step
from tests.test_dashboard_pages import signed_in
from workflows.access.tokens import create_api_token
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.catalog.models import Workflow
from workflows.queries import dashboard as ds
from workflows.queries import runs as selectors
from workflows.runs.models import Run, StepRun

pytestmark = pytest.mark.django_db

BIG_TABLES = ("workflows_run", "workflows_steprun", "workflows_runjournal", "workflows_event")


def published(slug: str):
    put_workflow(slug=slug, raw=definition(log_step("first"), log_step("second")))
    return publish_workflow(slug=slug)


def runs_with_steps(version, count: int) -> list[Run]:
    runs = Run.objects.bulk_create(
        Run(workflow_id=version.workflow_id, version=version, status="succeeded")
        for _ in range(count)
    )
    StepRun.objects.bulk_create(
        StepRun(run=run, step_id=step, kind="log", status="succeeded", output={"n": 1})
        for run in runs
        for step in ("first", "second")
    )
    return runs


def api_get(client, token: str, url: str):
    response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    return response.json()


def test_the_api_run_list_takes_as_many_queries_for_five_hundred_runs_as_for_five(client):
    version = published("counted")
    runs_with_steps(version, 500)
    _token, token = create_api_token(name="counter", role="viewer")
    api_get(client, token, "/api/v1/runs?limit=1")  # the token's first use is recorded once
    with CaptureQueriesContext(connection) as five:
        small = api_get(client, token, "/api/v1/runs?limit=5&workflow=counted")
    with CaptureQueriesContext(connection) as many:
        large = api_get(client, token, "/api/v1/runs?limit=500&workflow=counted")

    assert len(small["runs"]) == 5 and len(large["runs"]) == 500
    assert [s["id"] for s in large["runs"][0]["steps"]] == ["first", "second"]
    assert len(many) == len(five), [q["sql"][:120] for q in many.captured_queries]


def test_the_api_run_list_of_an_unknown_workflow_is_empty(client):
    runs_with_steps(published("known"), 2)
    _token, token = create_api_token(name="unknown", role="viewer")
    assert api_get(client, token, "/api/v1/runs?workflow=nope")["runs"] == []
    assert len(api_get(client, token, "/api/v1/runs?workflow=known")["runs"]) == 2


def test_the_run_list_offers_a_text_field_once_there_are_too_many_workflows_to_list(client):
    signed_in(client, "viewer")
    published("first-one")
    page = client.get("/runs/").content.decode()
    assert '<option value="first-one"' in page

    Workflow.objects.bulk_create(
        Workflow(slug=f"bulk-{n:04d}", name="bulk", draft={}) for n in range(ds.WORKFLOW_CHOICES)
    )
    with CaptureQueriesContext(connection) as captured:
        page = client.get("/runs/?workflow=first-one").content.decode()
    assert '<option value="first-one"' not in page
    assert '<input name="workflow" value="first-one"' in page
    pickers = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].startswith('SELECT "workflows_workflow"."slug" AS "slug"')
    ]
    assert pickers and all("LIMIT 201" in sql for sql in pickers), pickers


def test_the_workflow_choices_leave_out_hidden_workflows():
    keep, hide = published("keep"), published("hide")
    assert ds.workflow_choices(frozenset({hide.workflow_id})) == ["keep"]
    assert ds.workflow_choices() == ["hide", "keep"]
    assert keep.workflow_id


# --- plans ----------------------------------------------------------------------------------------


@pytest.fixture
def many_runs(db):
    """100,000 runs of 4 workflows (1% failed), steps and journal rows for the newest 500."""
    versions = [published(f"plan-{n}") for n in range(4)]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workflows_run (workflow_id, version_id, status, error, origin,
                replay_from_step, correlation_id, partition_key, seq, created_at)
            SELECT (%(w)s::bigint[])[1 + g %% 4], (%(v)s::bigint[])[1 + g %% 4],
                CASE WHEN g %% 100 = 0 THEN 'failed' ELSE 'succeeded' END,
                '', 'trigger', '', '', '', 3, now()
            FROM generate_series(1, 100000) AS g
            """,
            {"w": [v.workflow_id for v in versions], "v": [v.pk for v in versions]},
        )
        cursor.execute(
            """
            INSERT INTO workflows_steprun (run_id, step_id, attempt, kind, status, error,
                error_code, retryable, port, idempotency_key, worker, created_at)
            SELECT r.id, 'step-' || k, 1, 'log', 'succeeded', '', '', false, '', '', '', now()
            FROM (SELECT id FROM workflows_run ORDER BY id DESC LIMIT 500) r
            CROSS JOIN generate_series(1, 3) AS k
            """
        )
        cursor.execute(
            """
            INSERT INTO workflows_runjournal (run_id, seq, kind, data, at)
            SELECT r.id, k, 'step.changed', '{}'::jsonb, now()
            FROM (SELECT id FROM workflows_run ORDER BY id DESC LIMIT 500) r
            CROSS JOIN generate_series(1, 8) AS k
            """
        )
        for table in BIG_TABLES:
            cursor.execute(f"ANALYZE {table}")
    return versions


def plans_of(call) -> list[tuple[str, str]]:
    """Run `call`, then EXPLAIN every SELECT it made on a big table: [(sql, plan)]. With
    sequential scans disabled, so that a small table (steps, events, journal here) shows
    the index the query can use at any size; a Seq Scan then means there is none (an
    empty table may still be shown scanned: its plan costs nothing either way)."""
    captured: list[tuple[str, object]] = []

    def wrapper(execute, sql, params, many, context):
        captured.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        call()
    out = []
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            for sql, params in captured:
                if sql.lstrip().upper().startswith("SELECT") and any(t in sql for t in BIG_TABLES):
                    cursor.execute("EXPLAIN " + sql, params)
                    out.append((sql, "\n".join(row[0] for row in cursor.fetchall())))
        finally:
            cursor.execute("RESET enable_seqscan")
    return out


def assert_indexed(plans: list[tuple[str, str]]) -> None:
    assert plans
    for sql, plan in plans:
        for table in BIG_TABLES:
            assert f"Seq Scan on {table}" not in plan, f"{sql}\n{plan}"
        assert "Index" in plan, f"{sql}\n{plan}"
        assert "count(" not in sql.lower() or "workflows_run" not in sql, sql


def test_the_api_run_list_reads_indexes_for_every_filter(many_runs):
    slug = many_runs[1].workflow.slug
    newest = Run.objects.order_by("-id").values_list("id", flat=True).first()
    for label, kwargs in {
        "newest": {},
        "workflow": {"workflow_slug": slug},
        "status": {"status": "failed"},
        "workflow and status": {"workflow_slug": slug, "status": "failed"},
        "deep page": {"before_id": newest - 80_000},
        "deep page of a workflow": {"workflow_slug": slug, "before_id": newest - 80_000},
    }.items():
        plans = plans_of(lambda kwargs=kwargs: list(selectors.runs(**kwargs)))
        assert_indexed(plans)
        page = plans[0][1]
        # Read newest first along an index and stopped at the page: never every run of
        # the workflow gathered and sorted (what a join on the slug was planned as).
        assert "Sort" not in page and "Bitmap Heap Scan on workflows_run" not in page, (
            f"{label}\n{page}"
        )


def test_the_run_page_reads_indexes_only(many_runs):
    run = Run.objects.order_by("-id").first()
    plans = plans_of(lambda: ds.run_view(run.pk))
    assert_indexed(plans)
    assert any("workflows_runjournal" in sql for sql, _ in plans)
