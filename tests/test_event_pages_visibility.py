"""The dashboard's event store pages follow team visibility, as the live flow does: a user
outside a team sees the events (they belong to no workflow) but not the runs they started
in the team's workflows, nor the team's run events."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tests.accounts import sign_in
from tests.factories import definition, log_step
from tests.runs_here import drive, publish, trigger
from workflows.catalog.models import Workflow
from workflows.events.models import Event

ORDER = "com.example.order.placed"


def signed_in(name: str, *teams: Group) -> Client:
    return sign_in(Client(), name, "viewer", *teams)


@pytest.fixture
def world(db):
    finance = Group.objects.create(name="finance")
    publish("payroll", definition(log_step("pay"), event=ORDER))
    Workflow.objects.filter(slug="payroll").update(team=finance)
    publish("shop", definition(log_step("sell"), event=ORDER))
    payroll = drive(trigger("payroll", {"n": 1}, type=ORDER))
    shop = next(r for r in payroll.event.runs.all() if r.workflow.slug == "shop")
    drive(shop)
    return {
        "team": finance,
        "event": payroll.event,
        "payroll_run": payroll,
        "shop_run": shop,
        "payroll_done": Event.objects.get(type="signalbox.run.succeeded", subject="payroll"),
        "shop_done": Event.objects.get(type="signalbox.run.succeeded", subject="shop"),
    }


def listed_ids(page: str) -> set[int]:
    return {int(n) for n in re.findall(r'href="/events/(\d+)/"', page)}


def test_an_outsider_sees_the_event_but_not_the_teams_runs_or_run_events(world):
    outsider = signed_in("outsider")

    listed = listed_ids(outsider.get("/events/").content.decode())
    assert world["event"].pk in listed and world["shop_done"].pk in listed
    assert world["payroll_done"].pk not in listed
    assert outsider.get(f"/events/{world['payroll_done'].pk}/").status_code == 404

    detail = outsider.get(f"/events/{world['event'].pk}/").content.decode()
    assert f"/runs/{world['shop_run'].pk}/" in detail
    assert f"/runs/{world['payroll_run'].pk}/" not in detail


def test_a_team_member_sees_the_teams_runs_and_run_events(world):
    member = signed_in("member", world["team"])

    listed = listed_ids(member.get("/events/").content.decode())
    assert {world["payroll_done"].pk, world["shop_done"].pk} <= listed
    assert member.get(f"/events/{world['payroll_done'].pk}/").status_code == 200
    detail = member.get(f"/events/{world['event'].pk}/").content.decode()
    assert f"/runs/{world['payroll_run'].pk}/" in detail
