"""A million runs and their trigger events, made with generate_series: the fixture the
EXPLAIN tests share (tests/test_keyset_explain.py, tests/test_pages_explain.py) and the
loader bench/pages.py uses, so the benchmark measures the data the tests check.

Loading takes 40 to 80 s on the shared 2-core machine, so the fixture is built once per test
process (session scope; tests/conftest.py registers it) and the tests that use it run last
(`run_million_row_tests_last`), so no other test ever sees the rows."""

from __future__ import annotations

import contextlib
import time

import pytest

RUNS = 1_000_000
WORKFLOWS = 4
SOURCE = "/keyset"


@contextlib.contextmanager
def bulk_load(cursor, tables: list[str]):
    """A million rows load several times faster into tables without their secondary
    indexes and foreign-key triggers: drop the indexes (those behind no constraint), turn
    the triggers off for this session (the rows are consistent by construction), and build
    the same indexes again afterwards, whatever happens."""
    cursor.execute(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = current_schema() AND i.tablename = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                          WHERE c.conindid = (quote_ident(i.indexname))::regclass)
        """,
        [tables],
    )
    indexes = cursor.fetchall()
    for name, _definition in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    cursor.execute("SET session_replication_role = replica")
    try:
        yield
    finally:
        cursor.execute("SET session_replication_role = DEFAULT")
        for _name, definition in indexes:
            cursor.execute(definition)


def load_runs(cursor, workflow_ids: list[int], version_ids: list[int], count: int = RUNS) -> None:
    """`count` events 100 ms apart ending now (a third com.example.paid, the rest
    com.example.order; one in 50,000 says "needle"), and one run of each, spread over the
    workflows: 1% failed (finished, with an error and a failed attempt of their one step),
    1% running, the rest succeeded. Then
    ANALYZE, and VACUUM so the visibility map lets index-only scans skip the heap, as
    autovacuum would have long since on a table this old."""
    with bulk_load(cursor, ["workflows_event", "workflows_run"]):
        cursor.execute(
            """
            INSERT INTO workflows_event (source, ce_id, type, subject, specversion,
                datacontenttype, dataschema, data, data_is_base64, extensions,
                correlation_id, causation_id, validation, channel, received_at)
            SELECT %(source)s, 'e' || g,
                CASE WHEN g %% 3 = 0 THEN 'com.example.paid' ELSE 'com.example.order' END,
                'order-' || (g %% 1000), '1.0', 'application/json', '',
                jsonb_build_object('order', g,
                    'note', CASE WHEN g %% 50000 = 7 THEN 'needle' ELSE 'hay' END),
                false, '{}'::jsonb, 'conv-' || (g / 4), 'e' || g, 'unvalidated', 'http',
                now() - ((%(n)s - g) * interval '100 milliseconds')
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": count, "source": SOURCE},
        )
        cursor.execute(
            """
            INSERT INTO workflows_run (workflow_id, version_id, event_id, status, error,
                origin, replay_from_step, correlation_id, partition_key, seq, created_at,
                started_at, finished_at)
            SELECT (%(workflows)s::bigint[])[1 + e.id %% %(k)s],
                (%(versions)s::bigint[])[1 + e.id %% %(k)s], e.id,
                CASE WHEN e.id %% 100 = 0 THEN 'failed'
                     WHEN e.id %% 100 = 1 THEN 'running' ELSE 'succeeded' END,
                CASE WHEN e.id %% 100 = 0 THEN 'step only failed: HTTP 50' || (e.id / 100 %% 4)
                     ELSE '' END,
                'trigger', '', e.correlation_id, '', 3, e.received_at, e.received_at,
                CASE WHEN e.id %% 100 = 1 THEN NULL
                     ELSE e.received_at + interval '30 milliseconds' END
            FROM workflows_event e WHERE e.source = %(source)s ORDER BY e.id
            """,
            {
                "workflows": workflow_ids,
                "versions": version_ids,
                "k": len(workflow_ids),
                "source": SOURCE,
            },
        )
    # A failed run's failed attempt (a replay or its dry run plans from it).
    cursor.execute(
        """
        INSERT INTO workflows_steprun (run_id, step_id, attempt, kind, status, input, output,
            error, error_code, retryable, port, idempotency_key, worker, created_at,
            enqueued_at, started_at, finished_at)
        SELECT r.id, 'only', 1, 'log', 'failed', '{}'::jsonb, NULL, r.error, 'http_5xx',
            false, '', r.id || ':only', 'million@tests', r.created_at, r.created_at,
            r.created_at, r.finished_at
        FROM workflows_run r
        WHERE r.status = 'failed' AND r.workflow_id = ANY(%(workflows)s)
        """,
        {"workflows": workflow_ids},
    )
    cursor.execute("VACUUM ANALYZE workflows_steprun")
    cursor.execute("VACUUM ANALYZE workflows_event")
    cursor.execute("VACUUM ANALYZE workflows_run")


def remove_runs(cursor, workflow_ids: list[int]) -> None:
    """Without the foreign-key triggers, as they were made: row by row, the checks of every
    table referring to a run took minutes on a busy machine (nothing else refers to these
    rows but their step attempts, removed first)."""
    cursor.execute("SET session_replication_role = replica")
    try:
        cursor.execute(
            "DELETE FROM workflows_steprun WHERE run_id IN"
            " (SELECT id FROM workflows_run WHERE workflow_id = ANY(%s))",
            [workflow_ids],
        )
        cursor.execute("DELETE FROM workflows_run WHERE workflow_id = ANY(%s)", [workflow_ids])
        cursor.execute("DELETE FROM workflows_event WHERE source = %s", [SOURCE])
    finally:
        cursor.execute("SET session_replication_role = DEFAULT")


@pytest.fixture(scope="session")
def million_runs(django_db_setup, django_db_blocker):
    """The slugs of the WORKFLOWS workflows owning a million runs (see load_runs)."""
    from django.db import connection

    from tests.factories import definition, log_step
    from workflows.authoring.definitions import publish_workflow, put_workflow
    from workflows.catalog.models import Workflow

    with django_db_blocker.unblock():
        slugs = [f"keyset-{n}" for n in range(WORKFLOWS)]
        versions = []
        for slug in slugs:
            put_workflow(slug=slug, raw=definition(log_step("only")))
            versions.append(publish_workflow(slug=slug))
        workflow_ids = [v.workflow_id for v in versions]
        started = time.monotonic()
        with connection.cursor() as cursor:
            load_runs(cursor, workflow_ids, [v.pk for v in versions])
        print(f"\n{RUNS:,} runs and events made in {time.monotonic() - started:.1f} s")
        yield slugs
        with connection.cursor() as cursor:
            remove_runs(cursor, workflow_ids)
        Workflow.objects.filter(slug__in=slugs).delete()


def run_million_row_tests_last(items: list) -> None:
    """Move the tests that use `million_runs` to the end, in their order: the rows are made
    once for all of them and removed when the session ends, so no other test meets them."""
    users = [item for item in items if "million_runs" in getattr(item, "fixturenames", ())]
    if users:
        using = set(users)
        items[:] = [item for item in items if item not in using] + users
