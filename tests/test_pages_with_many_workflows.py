"""Pages that list workflows must not grow with their number (at 10,000 published, the
workflows page took 1.7 s to render, the replay and re-drive pages 0.4-0.5 s). The
workflows page: a page at a time in slug order, a search by slug or name, and no workflow
of a team the reader is not in. The replay and re-drive forms: a workflow picker that is
a text field past `WORKFLOW_CHOICES`, as the run list's."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tests.accounts import sign_in
from workflows.catalog.models import Workflow
from workflows.catalog.visibility import WORKFLOW_CHOICES
from workflows.queries.runs import WORKFLOWS_PER_PAGE

pytestmark = pytest.mark.django_db


@pytest.fixture
def viewer():
    return sign_in(Client(), "vera", "viewer")


def many(count: int, **fields) -> None:
    Workflow.objects.bulk_create(
        Workflow(
            slug=f"wf-{n:03d}",
            name=f"Flow {n}",
            draft={"triggers": [{"event": "com.example.x"}], "steps": []},
            **fields,
        )
        for n in range(count)
    )


def listed(page: str) -> list[str]:
    return re.findall(r'<tr id="workflow-([^"]+)">', page)


def next_link(page: str) -> str | None:
    found = re.search(r'<a rel="next" href="([^"]+)" id="workflows-next">', page)
    return found.group(1).replace("&amp;", "&") if found else None


def test_the_workflows_come_a_page_at_a_time_in_slug_order(viewer):
    many(WORKFLOWS_PER_PAGE + 5)

    first = viewer.get("/workflows/").content.decode()
    second = viewer.get(next_link(first)).content.decode()

    assert listed(first) == [f"wf-{n:03d}" for n in range(WORKFLOWS_PER_PAGE)]
    assert next_link(first) == f"/workflows/?after=wf-{WORKFLOWS_PER_PAGE - 1:03d}"
    assert listed(second) == [
        f"wf-{n:03d}" for n in range(WORKFLOWS_PER_PAGE, WORKFLOWS_PER_PAGE + 5)
    ]
    assert next_link(second) is None and 'id="workflows-first"' in second


def test_a_search_matches_slug_or_name_in_any_case_and_pages_keep_it(viewer):
    many(WORKFLOWS_PER_PAGE + 5)

    by_name = viewer.get("/workflows/", {"q": "flow 10"}).content.decode()
    by_slug = viewer.get("/workflows/", {"q": "WF-05"}).content.decode()
    nothing = viewer.get("/workflows/", {"q": "<script>"}).content.decode()

    assert listed(by_name) == ["wf-010", *(f"wf-{n:03d}" for n in range(100, 105))]
    assert listed(by_slug) == [f"wf-{n:03d}" for n in range(50, 60)]
    assert listed(nothing) == [] and "No workflows here." in nothing
    assert 'value="&lt;script&gt;"' in nothing
    assert 'value="flow 10"' in by_name


def test_a_search_spanning_pages_carries_into_the_next_page(viewer):
    many(WORKFLOWS_PER_PAGE + 5)

    first = viewer.get("/workflows/", {"q": "wf-"}).content.decode()

    assert next_link(first) == f"/workflows/?after=wf-{WORKFLOWS_PER_PAGE - 1:03d}&q=wf-"
    assert (
        listed(viewer.get(next_link(first)).content.decode())[0] == f"wf-{WORKFLOWS_PER_PAGE:03d}"
    )


def test_a_workflow_of_another_team_is_not_listed():
    ours, theirs = Group.objects.create(name="ours"), Group.objects.create(name="theirs")
    Workflow.objects.create(slug="shared", name="Shared", draft={})
    Workflow.objects.create(slug="our-flow", name="Ours", draft={}, team=ours)
    Workflow.objects.create(slug="their-flow", name="Theirs", draft={}, team=theirs)
    member = sign_in(Client(), "mia", "viewer", ours)
    admin = sign_in(Client(), "ada", "admin")

    assert listed(member.get("/workflows/").content.decode()) == ["our-flow", "shared"]
    assert listed(admin.get("/workflows/").content.decode()) == ["our-flow", "shared", "their-flow"]


@pytest.mark.parametrize("path", ["/replays/", "/redrive/"])
def test_the_recovery_forms_pick_a_workflow_by_slug_once_there_are_too_many_to_list(path):
    operator = sign_in(Client(), "otto", "operator")
    many(5)
    short = operator.get(path, {"workflow": "wf-003"}).content.decode()
    many_more = [
        Workflow(slug=f"bulk-{n:04d}", name="bulk", draft={}) for n in range(WORKFLOW_CHOICES)
    ]
    Workflow.objects.bulk_create(many_more)

    long = operator.get(path, {"workflow": "wf-003"}).content.decode()

    assert '<option value="wf-003" selected>' in short
    assert "<option" not in long.split('name="workflow"')[1].split("</label>")[0]
    assert '<input name="workflow" value="wf-003"' in long
