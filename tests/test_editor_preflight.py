"""What a run would trip over, found before publishing (workflows/authoring/preflight.py):
reads of missing or later steps, unknown vars, addresses the outbound guard refuses."""

from __future__ import annotations

import pytest

from tests.factories import definition, http_step, log_step
from workflows.authoring import drafts
from workflows.authoring.preflight import outbound_problems, preflight, reference_problems
from workflows.core.definition import InvalidDefinition

NO_ALLOW: tuple[str, ...] = ()


def messages(problems) -> list[str]:
    return [f"{p.path} {p.message}" for p in problems]


def test_a_read_of_a_deleted_step_is_a_problem_on_the_field_that_reads_it():
    raw = definition(log_step("notify", message="order {{ steps.charge.output.id }}"))
    found = messages(reference_problems(raw))
    assert len(found) == 1
    assert found[0].startswith("/steps/0/config/message reads steps.charge")
    assert "no step 'charge'" in found[0]


def test_a_read_of_an_upstream_step_is_fine():
    raw = definition(
        log_step("charge", message="x"),
        log_step("notify", after=("charge",), message="{{ steps.charge.output.message }}"),
    )
    assert reference_problems(raw) == []


def test_a_read_of_a_step_that_does_not_run_before_is_a_problem():
    raw = definition(
        log_step("first", message="{{ steps.second.output }}"),
        log_step("second", after=("first",), message="x"),
    )
    found = messages(reference_problems(raw))
    assert found == [
        "/steps/0/config/message reads steps.second, but step 'second' does not run before "
        "this one: wire it before 'first' or read another step"
    ]


def test_a_step_reading_its_own_output_is_a_problem():
    raw = definition(log_step("me", message="{{ steps.me.output }}"))
    assert "its own output" in messages(reference_problems(raw))[0]


def test_cel_fields_index_reads_and_unknown_output_fields_are_checked():
    raw = definition(
        {"id": "check", "kind": "condition", "config": {"expression": "event.data.ok"}},
        {
            "id": "gate",
            "kind": "filter",
            "after": ["check"],
            "config": {"expression": 'steps["gone"].output.x || steps.check.output.reslt'},
        },
    )
    found = messages(reference_problems(raw))
    assert len(found) == 2
    assert "no step 'gone'" in found[0]
    assert "a condition step's output has only result" in found[1]


def test_presence_tests_and_string_literals_are_not_reads():
    raw = definition(
        {
            "id": "gate",
            "kind": "filter",
            "config": {"expression": 'has(steps.maybe) || "steps.gone" == event.data.s'},
        }
    )
    assert reference_problems(raw) == []


def test_an_unknown_variable_is_a_problem_and_a_known_one_is_not():
    raw = definition(log_step("a", message="{{ vars.region }} {{ vars.zone }}"))
    raw["vars"] = {"region": "eu"}
    assert messages(reference_problems(raw)) == [
        "/steps/0/config/message reads vars.zone, but the workflow sets no variable 'zone'"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/x",
        "http://localhost:9000/x",
        "http://192.168.0.7/{{ event.data.path }}",
    ],
)
def test_an_address_the_guard_refuses_is_named_with_the_setting_that_allows_it(url):
    raw = definition(http_step("call", url))
    found = messages(outbound_problems(raw, allow=NO_ALLOW))
    assert len(found) == 1, found
    assert found[0].startswith("/steps/0/config/url the outbound guard will refuse")
    assert "SIGNALBOX_OUTBOUND_ALLOW" in found[0]


@pytest.mark.parametrize(
    "url",
    [
        "https://pay.example.com/v1",
        "https://93.184.215.14/x",
        "https://{{ event.data.host }}/x",
        "http://10.1.2.3/hook",  # allowlisted below
        "http://internal.example/x",  # allowlisted by name
    ],
)
def test_public_allowlisted_and_templated_hosts_are_not_problems(url):
    raw = definition(http_step("call", url))
    assert outbound_problems(raw, allow=("10.0.0.0/8", "internal.example")) == []


def test_a_for_each_inner_request_is_checked_too():
    raw = definition(
        {
            "id": "each",
            "kind": "for_each",
            "config": {
                "items": "event.data.items",
                "do": {"kind": "http_request", "config": {"url": "http://172.16.0.9/"}},
            },
        }
    )
    found = messages(outbound_problems(raw, allow=NO_ALLOW))
    assert len(found) == 1 and found[0].startswith("/steps/0/config/do/config/url")


def test_the_settings_allowlist_is_what_the_draft_is_judged_by(settings):
    raw = definition(http_step("call", "http://10.9.9.9/x"))
    settings.SIGNALBOX_OUTBOUND_ALLOW = ["10.9.9.9/32"]
    assert preflight(raw) == []
    settings.SIGNALBOX_OUTBOUND_ALLOW = []
    assert len(preflight(raw)) == 1


@pytest.mark.django_db
def test_a_draft_with_run_time_problems_shows_them_and_is_not_published(settings):
    settings.SIGNALBOX_OUTBOUND_ALLOW = []
    workflow = drafts.create_workflow(slug="preflight", name="preflight", by="ann")
    raw = definition(
        http_step("call", "http://10.0.0.8/hook"),
        log_step("done", after=("call",), message="{{ steps.gone.output }}"),
    )
    problems = drafts.save_draft(workflow=workflow, raw=raw, by="ann")
    assert [p.path for p in problems] == ["/steps/1/config/message", "/steps/0/config/url"]
    nodes = drafts.node_problems(raw, problems)
    assert set(nodes.steps) == {0, 1}

    with pytest.raises(InvalidDefinition) as refused:
        drafts.publish_draft(workflow=workflow, by="ann")
    assert len(refused.value.problems) == 2
    workflow.refresh_from_db()
    assert workflow.published_version is None
    assert workflow.draft == raw  # kept

    raw["steps"][0]["config"]["url"] = "https://hooks.example.com/x"
    raw["steps"][1]["config"]["message"] = "{{ steps.call.output.status }}"
    assert drafts.save_draft(workflow=workflow, raw=raw, by="ann") == []
    assert drafts.publish_draft(workflow=workflow, by="ann").number == 1
