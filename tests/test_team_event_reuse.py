"""Another team's events cannot be read by reusing them: not re-driven into one's own
workflow, not offered as a try-it sample, not tried by id."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tests.accounts import sign_in
from tests.test_emitted_event_visibility import PAID, build_world
from workflows.authoring import drafts
from workflows.catalog.models import Workflow
from workflows.events.models import Event
from workflows.queries.dashboard import hidden_for_team
from workflows.recovery.redrive import EventSelection, redrive_events


@pytest.fixture
def world(db):
    return build_world()


def outsider_hidden() -> frozenset[int]:
    """What another team's member may not see: finance's workflows."""
    return hidden_for_team(Group.objects.create(name="growth").pk)


def test_a_re_drive_never_selects_another_teams_emitted_events(world):
    selection = EventSelection(type=PAID, limit=10)
    hidden = outsider_hidden()
    assert world["payroll_run"].workflow_id in hidden

    outsider = redrive_events(
        workflow_slug="shop", selection=selection, dry_run=True, hidden=hidden
    )
    everyone = redrive_events(workflow_slug="shop", selection=selection, dry_run=True)

    assert [d.event.pk for d in outsider.deliveries] == []
    assert [d.event.pk for d in everyone.deliveries] == [world["paid"].pk]


def test_the_re_drive_page_previews_none_of_another_teams_events(world):
    outsider = sign_in(Client(), "outsider", "operator")
    member = sign_in(Client(), "member", "operator", world["team"])
    query = {"workflow": "ledger", "type": PAID, "limit": "10"}

    assert f"/events/{world['paid'].pk}/" not in outsider.get("/redrive/", query).content.decode()
    assert f"/events/{world['paid'].pk}/" in member.get("/redrive/", query).content.decode()


def test_try_it_offers_and_takes_no_sample_of_another_team(world):
    ledger = Workflow.objects.get(slug="ledger")
    hidden = outsider_hidden()

    assert world["paid"] not in drafts.recent_samples(
        slug="ledger", raw=ledger.draft, hidden=hidden
    )
    assert world["paid"] in drafts.recent_samples(slug="ledger", raw=ledger.draft)
    with pytest.raises(Event.DoesNotExist):
        drafts.try_draft(workflow=ledger, by="outsider", event_id=world["paid"].pk, hidden=hidden)
