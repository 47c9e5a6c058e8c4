"""workflows.infra.row_sql: rows written as `save()` writes them, statements sent together,
and a last statement sent with the COMMIT, on the real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.durable_runs import start_run_here
from tests.factories import log_step
from workflows.infra import row_sql
from workflows.runs.models import Run, RunJournal

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_insert_stores_what_save_stores():
    run = start_run_here("rows", log_step("only"))
    by_sql = RunJournal(run=run, seq=100, kind="k", data={"a": [1, "é"], "n": None})
    by_orm = RunJournal(run=run, seq=101, kind="k", data={"a": [1, "é"], "n": None})

    row_sql.insert([by_sql])
    by_orm.save(force_insert=True)

    stored = dict(RunJournal.objects.filter(run=run, seq__gte=100).values_list("seq", "data"))
    assert stored[100] == stored[101] == {"a": [1, "é"], "n": None}
    assert by_sql.at is not None  # auto_now_add filled in, as save() does
    assert by_sql.pk is None  # no key asked for


def test_an_insert_returning_its_key_and_an_update():
    run = start_run_here("rows", log_step("only"))
    copy = Run(workflow_id=run.workflow_id, version_id=run.version_id, correlation_id="c-1")

    row_sql.insert([copy], returning_pk=True)
    copy.status, copy.seq = "cancelled", 7
    changed = row_sql.update(copy, ["status", "seq"])

    assert changed == 1
    assert Run.objects.filter(pk=copy.pk).values_list("status", "seq", "correlation_id").get() == (
        "cancelled",
        7,
        "c-1",
    )
    assert row_sql.update(Run(pk=copy.pk + 10_000, status="x"), ["status"]) == 0


def test_statements_in_a_pipeline_all_take_effect():
    run = start_run_here("rows", log_step("only"))
    entries = [RunJournal(run=run, seq=200 + n, kind="k", data={}) for n in range(3)]

    with transaction.atomic(), row_sql.pipelined() as cursor:
        row_sql.insert(entries[:2], cursor=cursor)
        run.seq = 202
        assert row_sql.update(run, ["seq"], cursor=cursor) == -1  # answered later
        row_sql.insert(entries[2:], cursor=cursor)

    assert Run.objects.get(pk=run.pk).seq == 202
    assert RunJournal.objects.filter(run=run, seq__gte=200).count() == 3


def test_with_commit_sends_the_commit_and_the_block_commits_nothing_more():
    run = start_run_here("rows", log_step("only"))
    hooks = []

    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        transaction.on_commit(lambda: hooks.append("committed"))
        row_sql.with_commit(
            lambda cursor: row_sql.insert(
                [RunJournal(run=run, seq=300, kind="k", data={})], cursor=cursor
            )
        )
        # The transaction has ended on the server: nothing is left to commit.
        assert connection.connection.info.transaction_status == 0  # IDLE

    assert [q["sql"] for q in queries][-1] == "COMMIT"
    assert hooks == ["committed"]
    assert RunJournal.objects.filter(run=run, seq=300).exists()


def test_a_commit_that_fails_rolls_the_block_back():
    hooks = []
    # Foreign keys are checked at COMMIT (deferred): a journal entry of no run fails there.
    with pytest.raises(IntegrityError), transaction.atomic():
        transaction.on_commit(lambda: hooks.append("committed"))
        row_sql.with_commit(
            lambda cursor: row_sql.insert(
                [RunJournal(run_id=987_654_321, seq=1, kind="k", data={})], cursor=cursor
            )
        )

    assert hooks == []
    assert not RunJournal.objects.filter(run_id=987_654_321).exists()
    # The connection is usable afterwards.
    assert Run.objects.count() >= 0


def test_inside_an_outer_transaction_with_commit_commits_nothing():
    run = start_run_here("rows", log_step("only"))

    with pytest.raises(RuntimeError), transaction.atomic():
        with transaction.atomic():
            row_sql.with_commit(
                lambda cursor: row_sql.insert(
                    [RunJournal(run=run, seq=400, kind="k", data={})], cursor=cursor
                )
            )
        raise RuntimeError("the outer block rolls back")

    assert not RunJournal.objects.filter(run=run, seq=400).exists()


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:  # the ORM's kind of cursor: prepares nothing itself
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [statement for (statement,) in cursor.fetchall()]


def journal_inserts_of(rows: int) -> list[str]:
    """The prepared journal INSERTs of `rows` rows (a count no other code path sends)."""
    return [
        s
        for s in prepared_statements()
        if s.startswith('INSERT INTO "workflows_runjournal"') and s.count("), (") == rows - 1
    ]


def entries(run: Run, first: int, rows: int) -> list[RunJournal]:
    return [RunJournal(run=run, seq=first + n, kind="k", data={"n": n}) for n in range(rows)]


def test_the_hot_statements_are_prepared_once_per_connection_and_logged_as_sent():
    run = start_run_here("rows", log_step("only"))

    with CaptureQueriesContext(connection) as seen:
        for first in (200, 210, 220):
            row_sql.insert(entries(run, first, 7))

    [prepared] = journal_inserts_of(7)  # one statement, prepared once and run three times
    assert "$35" in prepared
    assert RunJournal.objects.filter(run=run, seq__gte=200).count() == 21
    assert RunJournal.objects.get(run=run, seq=226).data == {"n": 6}
    # Django's query log shows each run with its values, as for the ORM's statements.
    logged = [q["sql"] for q in seen.captured_queries]
    assert len(logged) == 3 and all("workflows_runjournal" in sql for sql in logged)
    assert "226" in logged[2] and "$1" not in logged[2]


@pytest.mark.parametrize(("setting", "threshold"), [(None, "0"), ("0", "None")])
def test_prepared_statements_are_on_unless_the_setting_turns_them_off(setting, threshold):
    # Off for a pooler that does not carry prepared statements: psycopg then prepares
    # nothing, on any cursor.
    env = {k: v for k, v in os.environ.items() if k != "SIGNALBOX_DB_PREPARED_STATEMENTS"}
    env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1/x"
    if setting is not None:
        env["SIGNALBOX_DB_PREPARED_STATEMENTS"] = setting
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "from orchestrator import settings; "
            "print(settings.DATABASES['default']['OPTIONS'].get('prepare_threshold'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == threshold
