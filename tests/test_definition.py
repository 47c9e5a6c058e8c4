"""Workflow definitions: every problem is listed, each with a JSON-pointer path."""

from __future__ import annotations

import pytest

from tests.factories import definition, http_step, log_step
from workflows.core.definition import Definition, InvalidDefinition, RetryPolicy, Trigger, parse
from workflows.steps import registry

KINDS = registry.all_kinds()


def problems_of(raw) -> dict[str, str]:
    with pytest.raises(InvalidDefinition) as caught:
        parse(raw, kinds=KINDS)
    found: dict[str, str] = {}
    for problem in caught.value.problems:
        assert problem.path.startswith("/"), problem
        found.setdefault(problem.path, problem.message)
    assert str(caught.value)  # the exception message carries the problems too
    return found


def test_a_valid_definition_parses_into_plain_dataclasses():
    parsed = parse(
        definition(
            log_step("first"),
            http_step(
                "call",
                "https://example.com/hook",
                after=("first",),
                retry={"max_attempts": 3, "backoff": "fixed"},
            ),
            log_step("last", after=("first", "call")),
        ),
        kinds=KINDS,
    )

    assert isinstance(parsed, Definition)
    assert list(parsed.steps) == ["first", "call", "last"]
    assert parsed.roots() == ["first"]
    assert parsed.downstream("first") == ["call", "last"]
    assert parsed.steps["last"].after == ("first", "call")
    assert parsed.steps["call"].retry == RetryPolicy(max_attempts=3, backoff="fixed")
    assert parsed.steps["first"].retry == RetryPolicy()
    assert [t.event for t in parsed.triggers] == ["com.example.order.placed"]


def test_a_step_may_come_after_a_step_defined_later():
    parsed = parse(definition(log_step("b", after=("a",)), log_step("a")), kinds=KINDS)

    assert parsed.roots() == ["a"]


def test_an_unknown_kind_is_named_with_the_known_kinds():
    found = problems_of(definition({"id": "a", "kind": "teleport", "config": {}}))

    assert list(found) == ["/steps/0/kind"]
    assert "'teleport'" in found["/steps/0/kind"]
    assert "log" in found["/steps/0/kind"] and "http_request" in found["/steps/0/kind"]


def test_a_duplicate_step_id_points_at_the_second_use():
    found = problems_of(definition(log_step("a"), log_step("b"), log_step("a")))

    assert list(found) == ["/steps/2/id"]
    assert "duplicate" in found["/steps/2/id"] and "'a'" in found["/steps/2/id"]


def test_a_dangling_after_points_at_the_entry_that_names_no_step():
    found = problems_of(definition(log_step("a"), log_step("b", after=("a", "ghost"))))

    assert list(found) == ["/steps/1/after/1"]
    assert "'ghost'" in found["/steps/1/after/1"]


def test_a_step_cannot_come_after_itself():
    found = problems_of(definition(log_step("a", after=("a",))))

    assert list(found) == ["/steps/0/after/0"]
    assert "itself" in found["/steps/0/after/0"]


def test_a_cycle_is_refused_and_the_message_shows_it():
    found = problems_of(
        definition(
            log_step("start"),
            log_step("a", after=("start", "c")),
            log_step("b", after=("a",)),
            log_step("c", after=("b",)),
        )
    )

    assert list(found) == ["/steps"]
    message = found["/steps"]
    assert "cycle" in message
    cycle = message.split(": ", 1)[1].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    assert "start" not in cycle


def test_a_two_step_cycle_is_refused():
    found = problems_of(definition(log_step("a", after=("b",)), log_step("b", after=("a",))))

    assert "a -> b -> a" in found["/steps"] or "b -> a -> b" in found["/steps"]


def test_an_http_request_without_a_url_is_refused():
    found = problems_of(definition({"id": "call", "kind": "http_request", "config": {}}))

    assert list(found) == ["/steps/0/config"]
    assert "'url'" in found["/steps/0/config"]


def test_an_http_request_with_a_bad_method_names_the_method():
    found = problems_of(
        definition(http_step("call", "https://example.com", config={"method": "TELEPORT"}))
    )

    assert list(found) == ["/steps/0/config/method"]
    assert "TELEPORT" in found["/steps/0/config/method"]


def test_an_http_request_to_a_non_http_url_is_refused():
    found = problems_of(definition(http_step("call", "file:///etc/passwd")))

    assert list(found) == ["/steps/0/config/url"]


def test_a_config_key_with_a_slash_is_escaped_in_the_pointer():
    found = problems_of(
        definition(http_step("call", "https://example.com", config={"headers": {"a/b~c": 1}}))
    )

    assert list(found) == ["/steps/0/config/headers/a~1b~0c"]


def test_an_unknown_top_level_key_is_refused():
    raw = {**definition(log_step("a")), "colour": "blue"}

    found = problems_of(raw)

    assert list(found) == ["/"]
    assert "'colour'" in found["/"]


def test_an_unknown_step_key_is_refused():
    found = problems_of(definition({**log_step("a"), "when": "always"}))

    assert list(found) == ["/steps/0"]
    assert "'when'" in found["/steps/0"]


def test_a_trigger_may_keep_where_the_editor_draws_it_and_the_engine_ignores_it():
    raw = definition(log_step("a", message="hi"))
    raw["triggers"][0]["position"] = {"x": -120.5, "y": 40}
    raw["steps"][0]["position"] = {"x": 200, "y": 40}

    parsed = parse(raw, kinds=KINDS)

    assert parsed.triggers == (Trigger(event="com.example.order.placed"),)
    assert raw["triggers"][0]["position"] == {"x": -120.5, "y": 40}  # the document keeps it


def test_a_trigger_position_that_is_not_numbers_is_refused_with_its_pointer():
    raw = definition(log_step("a"))
    raw["triggers"] = [
        {"event": "com.example.order.placed", "position": {"x": "left", "y": 10}},
        {"manual": True, "position": "top left"},
    ]

    found = problems_of(raw)

    assert list(found) == ["/triggers/0/position/x", "/triggers/1/position"]
    assert "'left' is not of type 'number'" in found["/triggers/0/position/x"]
    assert "is not of type 'object'" in found["/triggers/1/position"]


def test_a_trigger_with_only_a_position_is_refused():
    raw = definition(log_step("a"))
    raw["triggers"] = [{"position": {"x": 0, "y": 0}}]

    found = problems_of(raw)

    assert list(found) == ["/triggers/0"]
    assert "needs an event, webhook, schedule or manual" in found["/triggers/0"]


def test_a_definition_without_steps_is_refused():
    assert "/steps" in problems_of(definition())
    assert "/" in problems_of({"name": "no steps at all"})


def test_a_definition_that_is_not_an_object_is_refused():
    assert list(problems_of(["not", "a", "definition"])) == ["/"]


def test_an_invalid_retry_policy_is_refused():
    found = problems_of(definition({**log_step("a"), "retry": {"max_attempts": 0}}))

    assert list(found) == ["/steps/0/retry/max_attempts"]


def test_a_bad_step_id_is_refused():
    found = problems_of(definition(log_step("Not An Id")))

    assert list(found) == ["/steps/0/id"]


def test_every_structural_problem_is_listed_not_only_the_first():
    raw = {
        "name": "",
        "triggers": [{}],
        "steps": [{"id": "BAD", "kind": "log"}, {"kind": "log"}],
        "colour": "blue",
    }

    found = problems_of(raw)

    assert {"/", "/name", "/triggers/0", "/steps/0/id", "/steps/1"} <= set(found)


def test_every_reference_and_config_problem_is_listed_not_only_the_first():
    found = problems_of(
        definition(
            {"id": "a", "kind": "teleport", "config": {}},
            log_step("b", after=("ghost",)),
            log_step("b"),
            {"id": "c", "kind": "http_request", "config": {"method": "NOPE"}},
            log_step("d", after=("d",)),
        )
    )

    assert set(found) == {
        "/steps/0/kind",
        "/steps/1/after/0",
        "/steps/2/id",
        "/steps/3/config",
        "/steps/3/config/method",
        "/steps/4/after/0",
    }


def test_text_the_database_cannot_store_is_refused_with_its_path():
    found = problems_of(
        definition(log_step("a", message="nul \u0000 here"), log_step("b", message="\udc00"))
    )

    assert set(found) == {"/steps/0/config/message", "/steps/1/config/message"}
    assert "NUL" in found["/steps/0/config/message"]
