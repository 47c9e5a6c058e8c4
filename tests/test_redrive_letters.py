# ruff: noqa: F811
"""Bulk re-drive of selected dead letters: a preview to confirm (how many, to which workflow
and version, which cannot be re-driven and why), then each letter's outcome — never a
server error half-way, even with a poison letter among them."""

from __future__ import annotations

import pytest

from tests.runs_here import signed_in, token_client

# The dead-letter fixtures are shared with test_dead_letters (pytest finds them by name).
from tests.test_dead_letters import event_letter, step_letter  # noqa: F401
from workflows.events.models import DeadLetter
from workflows.recovery import dead_letters as dlq
from workflows.recovery.dead_letter_preview import preview_redrive
from workflows.runs.models import Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def poison() -> DeadLetter:
    """A bus letter whose (edited) payload names an event id that is not a number."""
    return DeadLetter.objects.create(
        kind="bus", reason="delivered too often", payload={"event_id": "abc"}
    )


def test_a_poison_letter_is_reported_and_the_others_are_re_driven(poison, step_letter):
    results = dlq.redrive_many(letter_ids=[poison.pk, step_letter.pk], actor="alice")

    assert [(r["id"], r["ok"]) for r in results] == [(poison.pk, False), (step_letter.pk, True)]
    assert "event_id must be a whole number" in results[0]["error"]
    poison.refresh_from_db()
    assert poison.resolved_at is None


def test_an_unforeseen_error_in_one_letter_does_not_stop_the_others(step_letter, event_letter):
    real = dlq._redrive

    def breaks_on_the_event_letter(letter, **kwargs):
        if letter.pk == event_letter.pk:
            raise KeyError("surprise")
        return real(letter, **kwargs)

    from unittest import mock

    with mock.patch.object(dlq, "_redrive", breaks_on_the_event_letter):
        results = dlq.redrive_many(letter_ids=[event_letter.pk, step_letter.pk], actor="alice")

    assert [r["ok"] for r in results] == [False, True]
    assert "unexpected error (KeyError)" in results[0]["error"]
    event_letter.refresh_from_db()
    assert event_letter.resolved_at is None


def test_the_preview_says_what_each_letter_would_do_and_starts_nothing(
    step_letter,
    event_letter,
    poison,
):
    previews = {
        p.letter_id: p
        for p in preview_redrive(letter_ids=[step_letter.pk, event_letter.pk, poison.pk, 999_999])
    }

    step = previews[step_letter.pk]
    assert step.can and step.workflow == "greeter" and step.version == 1
    assert step.action.startswith(f"replays run {step_letter.run_id} from the failed step")
    assert previews[event_letter.pk].can  # it is re-ingested; its schema decides then
    assert not previews[poison.pk].can and "whole number" in previews[poison.pk].action
    assert previews[999_999].action == "no such dead letter"
    assert not Run.objects.filter(origin="replay").exists()
    assert DeadLetter.objects.filter(resolved_at__isnull=False).count() == 0


def test_re_driving_selected_letters_in_the_dashboard_asks_first_then_shows_each_outcome(
    client,
    step_letter,
    poison,
):
    operator = signed_in(client, "operator")
    ids = [str(step_letter.pk), str(poison.pk)]

    preview = operator.post("/dead-letters/", {"ids": ids, "reason": "go"})

    text = preview.content.decode()
    assert preview.status_code == 200
    assert "Re-drive 1 of 2 selected dead letters?" in text
    assert f'id="redrive-preview-{step_letter.pk}" data-can="true"' in text
    assert f'id="redrive-preview-{poison.pk}" data-can="false"' in text
    assert "<code>greeter</code>" in text and "v1" in text
    assert not Run.objects.filter(origin="replay").exists()  # nothing done yet

    done = operator.post("/dead-letters/", {"ids": ids, "reason": "go", "confirm": "yes"})

    text = done.content.decode()
    assert done.status_code == 200
    assert "1 of 2 re-driven" in text
    assert f'id="redrive-result-{step_letter.pk}" data-ok="true"' in text
    assert f'id="redrive-result-{poison.pk}" data-ok="false"' in text
    assert "event_id must be a whole number" in text
    assert Run.objects.filter(origin="replay").count() == 1


def test_the_api_dry_runs_a_bulk_re_drive_and_answers_207_with_a_poison_letter(
    client,
    step_letter,
    poison,
):
    api = token_client(client, "operator")
    ids = [step_letter.pk, poison.pk]

    dry = api.post(
        "/api/v1/dead-letters/redrive",
        {"ids": ids, "dry_run": True},
        content_type="application/json",
    )
    done = api.post("/api/v1/dead-letters/redrive", {"ids": ids}, content_type="application/json")

    assert dry.status_code == 200 and dry.json()["can_redrive"] == 1
    assert [x["can_redrive"] for x in dry.json()["letters"]] == [True, False]
    assert done.status_code == 207
    assert [r["ok"] for r in done.json()["results"]] == [True, False]


def test_a_live_re_drive_lists_the_letters_then_re_drives_them_one_after_the_other(
    client, step_letter, poison
):
    operator = signed_in(client, "operator")
    ids = [str(poison.pk), str(step_letter.pk)]

    page = operator.post(
        "/dead-letters/", {"ids": ids, "confirm": "yes", "reason": "go"}, HTTP_HX_REQUEST="true"
    ).content.decode()

    assert f'id="redrive-result-{poison.pk}" data-ok="pending"' in page
    assert (
        'hx-trigger="load"' in page
        and f'hx-trigger="redrive-go-{step_letter.pk} from:body"' in page
    )
    assert not Run.objects.filter(origin="replay").exists()  # nothing done until the rows ask

    first = operator.post(
        f"/dead-letters/{poison.pk}/redrive-row/",
        {"reason": "go", "version": "original", "next": str(step_letter.pk)},
        HTTP_HX_REQUEST="true",
    )
    last = operator.post(
        f"/dead-letters/{step_letter.pk}/redrive-row/",
        {"reason": "go", "version": "original", "next": ""},
        HTTP_HX_REQUEST="true",
    )

    assert 'data-ok="false"' in first.content.decode()
    assert first["HX-Trigger"] == f'{{"redrive-go-{step_letter.pk}": true}}'
    assert 'data-ok="true"' in last.content.decode() and "replayed as run" in last.content.decode()
    assert last["HX-Trigger"] == '{"redrive-finished": true}'
    assert Run.objects.filter(origin="replay").count() == 1


def test_a_viewer_cannot_re_drive_a_row(client, poison):
    viewer = signed_in(client, "viewer")

    assert viewer.post(f"/dead-letters/{poison.pk}/redrive-row/").status_code == 403
