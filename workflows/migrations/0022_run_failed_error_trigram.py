"""A trigram index on the error text of failed runs, for the bulk replay page's "error
contains" filter (Django's icontains: UPPER(error) LIKE UPPER('%…%')), which otherwise
reads every failed run. Partial (failed runs only) and on runs, not events: a run's error is
written once, when it fails, so ingest pays nothing for it.

PostgreSQL only (pg_trgm, a trusted extension since PostgreSQL 13): on SQLite (`make run`)
both directions do nothing and the filter reads the failed runs as before. Not in the model's
Meta.indexes, which cannot say "PostgreSQL only"; the migration state is unchanged.
"""

from django.db import migrations

INDEX = "run_failed_error_trgm"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON workflows_run"
        " USING gin (upper(error) gin_trgm_ops) WHERE status = 'failed'"
    )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # The extension stays: something else may use it by now.
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0021_overview_rollups_and_failed_run_indexes"),
    ]

    operations = [migrations.RunPython(create, drop)]
