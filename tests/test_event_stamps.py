"""Events are stamped matched and published by id in one UPDATE: each column only for its
own ids, and a stamp already there is kept (a redelivery or a relay's second append does
not move it)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from workflows.events import stamps
from workflows.events.envelope import Envelope
from workflows.events.intake import ingest_event
from workflows.events.models import Event

pytestmark = pytest.mark.django_db


def stored(n: int) -> list[Event]:
    events = []
    for _ in range(n):
        envelope = Envelope(
            id=str(uuid.uuid4()), source="/tests", type="com.example.stamp", data={}
        )
        event, _created = ingest_event(envelope=envelope)
        events.append(event)
    Event.objects.filter(pk__in=[e.pk for e in events]).update(matched_at=None, published_at=None)
    return events


def stamps_of(event: Event) -> tuple:
    event.refresh_from_db()
    return event.matched_at, event.published_at


@pytest.mark.parametrize("vendor", ["postgresql", "other"])
def test_each_column_is_stamped_for_its_own_ids_and_a_first_stamp_is_kept(vendor, monkeypatch):
    # "other": the statement as written for SQLite (a placeholder per id), run here.
    if vendor == "other":
        monkeypatch.setattr(connection, "vendor", "sqlite")
    matched, published, both, untouched = stored(4)
    earlier = timezone.now() - timedelta(hours=1)
    Event.objects.filter(pk=both.pk).update(matched_at=earlier)
    before = timezone.now()

    stamps.stamp(matched=[matched.pk, both.pk], published=[published.pk, both.pk])

    matched_at, published_at = stamps_of(matched)
    assert matched_at >= before and published_at is None
    matched_at, published_at = stamps_of(published)
    assert matched_at is None and published_at >= before
    matched_at, published_at = stamps_of(both)
    assert matched_at == earlier and published_at >= before  # the first stamp stays
    assert stamps_of(untouched) == (None, None)


def test_one_column_alone_and_nothing_at_all(django_assert_num_queries):
    (event,) = stored(1)

    with django_assert_num_queries(0):
        stamps.stamp()
    stamps.stamp(published=[event.pk, event.pk])

    matched_at, published_at = stamps_of(event)
    assert matched_at is None and published_at is not None
