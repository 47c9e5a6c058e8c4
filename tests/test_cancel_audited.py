"""Cancelling a run records who and why: in the service, over the API and the command line,
and in the dashboard.
"""

from __future__ import annotations

from tests.factories import definition, log_step
from tests.runs_here import (
    command,
    publish,
    signed_in,
    token_client,
    trigger,
)
from workflows.access.models import AuditEntry
from workflows.runs.control import cancel_run


def test_cancelling_a_run_records_who_and_why(db):
    publish("cancellable", definition(log_step("only")))
    run = trigger("cancellable")

    assert cancel_run(run_id=run.pk, reason="wrong customer", by="token:ops")

    entry = AuditEntry.objects.get(action="run.cancel")
    assert (entry.actor, entry.target_id, entry.reason) == (
        "token:ops",
        str(run.pk),
        "wrong customer",
    )


def test_cancelling_over_the_api_and_the_cli_is_audited(db, client):
    publish("cancel-both", definition(log_step("only")))
    over_api, over_cli = trigger("cancel-both"), trigger("cancel-both", {"order": 2})
    api = token_client(client, "operator")

    response = api.post(
        f"/api/v1/runs/{over_api.pk}/cancel",
        {"reason": "duplicate order"},
        content_type="application/json",
    )
    command("runs", "cancel", str(over_cli.pk), "--reason", "test order")

    assert response.status_code == 202
    entries = {e.target_id: e for e in AuditEntry.objects.filter(action="run.cancel")}
    assert (entries[str(over_api.pk)].actor, entries[str(over_api.pk)].reason) == (
        "token:operator-token",
        "duplicate order",
    )
    assert (entries[str(over_cli.pk)].actor, entries[str(over_cli.pk)].reason) == (
        "cli",
        "test order",
    )


def test_cancelling_in_the_dashboard_is_audited(db, client):
    publish("long", definition(log_step("only")))
    run = trigger("long")

    response = signed_in(client, "operator").post(
        f"/runs/{run.pk}/cancel/", {"reason": "sent by mistake"}
    )

    run.refresh_from_db()
    assert response.status_code == 302 and run.status == "cancelled"
    entry = AuditEntry.objects.get(action="run.cancel")
    assert (entry.actor, entry.reason) == ("operator-user", "sent by mistake")
