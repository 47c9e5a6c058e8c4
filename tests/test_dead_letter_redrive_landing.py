"""Where re-driving one dead letter from its page lands: the page of the run it started, or,
for an event ingested again (its runs start later, through the bus), that event's lineage
page, which shows each run as it starts. The browser side: tests/browser/
test_run_page_live_browser.py."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.accounts import sign_in
from tests.factories import cloudevent
from workflows.access.roles import ensure_groups
from workflows.events.models import DeadLetter, Event

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    ensure_groups()
    return sign_in(Client(), "olga", "operator")


def test_an_event_letter_redriven_from_its_page_lands_on_the_new_events_lineage(operator):
    letter = DeadLetter.objects.create(
        kind="event",
        reason="not a valid CloudEvent",
        payload={"channel": "http", "cloudevent": cloudevent(data={"order": 3})},
    )

    answer = operator.post(f"/dead-letters/{letter.pk}/redrive/", {"reason": "fixed"})

    event = Event.objects.get(ce_id=letter.payload["cloudevent"]["id"])
    assert answer.status_code == 302
    assert answer["Location"] == f"/events/{event.pk}/lineage/"
    letter.refresh_from_db()
    assert letter.resolved_at is not None


def test_an_event_letter_that_cannot_be_redriven_stays_on_its_page_with_the_reason(operator):
    broken = {k: v for k, v in cloudevent().items() if k != "source"}
    letter = DeadLetter.objects.create(
        kind="event", reason="no source", payload={"channel": "http", "cloudevent": broken}
    )

    answer = operator.post(f"/dead-letters/{letter.pk}/redrive/", {"reason": "retry"})

    assert answer.status_code == 400
    assert "the CloudEvent is still invalid" in answer.content.decode()
    assert not Event.objects.exists()
