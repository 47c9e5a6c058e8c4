"""The contract every step kind keeps: run over each kind the registry knows.

A new kind fails here until it has a row in MINIMAL (a minimal valid config and what running
it gives), and passes only if it describes itself, has a JSON Schema for its config that
validation enforces, names its ports, points its expressions into its config, and runs with
JSON output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import jsonschema
import pytest

from workflows.authoring.definitions import parse_definition
from workflows.core import expressions
from workflows.core.definition import InvalidDefinition
from workflows.steps import registry
from workflows.steps.base import StepContext, StepError, StepResult

KINDS = sorted(registry.all_kinds())
GROUPS = {"actions", "data", "flow", "utility"}
PORT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")
TRIGGER = "com.example.order.placed"


@dataclass(frozen=True)
class Row:
    """A kind's minimal valid config (given the loopback server's URL) and the outcome of
    running it: "output", "wait" (parks the run) or "error" (a StepError, e.g. `fail`)."""

    config: Callable[[str], dict]
    outcome: str = "output"


MINIMAL: dict[str, Row] = {
    "log": Row(lambda url: {"message": "hello"}),
    "http_request": Row(lambda url: {"url": f"{url}/contract"}),
    "transform": Row(lambda url: {"output": {"order": 42, "tags": ["a"]}}),
    "emit_event": Row(lambda url: {"type": "com.example.order.checked"}),
    "send_email": Row(lambda url: {"to": ["ops@example.com"], "subject": "Hi", "body": "Hello"}),
    "fail": Row(lambda url: {"message": "stop here"}, outcome="error"),
    "python": Row(lambda url: {"function": "tests.total", "input": {"lines": []}}),
    "condition": Row(lambda url: {"expression": "event.data.order > 40"}),
    "switch": Row(lambda url: {"cases": [{"name": "big", "when": "event.data.order > 40"}]}),
    "filter": Row(lambda url: {"expression": "event.data.order > 40"}),
    "delay": Row(lambda url: {"seconds": 1}, outcome="wait"),
    "wait_for_event": Row(
        lambda url: {
            "event": "com.example.payment.received",
            "match": "event.data.order == trigger.data.order",
            "timeout_seconds": 60,
        },
        outcome="wait",
    ),
    "sub_workflow": Row(lambda url: {"workflow": "child", "input": {"a": 1}}, outcome="wait"),
    "publish": Row(lambda url: {"type": "com.example.order.shipped", "url": f"{url}/events"}),
    "for_each": Row(
        lambda url: {"items": "[1, 2]", "do": {"kind": "log", "config": {"message": "one"}}}
    ),
}


def context(**overrides) -> StepContext:
    def emit(config: dict) -> dict:
        return {"id": 1, "ce_id": "sb-contract-0001", "type": config["type"], "duplicate": False}

    def outgoing_event(config: dict):
        from workflows.events.envelope import Envelope

        return Envelope(id="sb-contract-0001", source="/signalbox/runs/7", type=config["type"])

    values = {
        "run_id": 7,
        "step_id": "step",
        "attempt": 1,
        "idempotency_key": "sb-contract-0001",
        "event": {"id": "e-1", "type": TRIGGER, "source": "/tests", "data": {"order": 42}},
        "steps": {},
        "outbound_allow": ("127.0.0.1/32",),
        "run": {"id": 7, "workflow": "contract", "version": 1, "correlation_id": "e-1"},
        "emit": emit,
        "outgoing_event": outgoing_event,
    }
    values.update(overrides)
    return StepContext(**values)


def definition_with(kind: str, config) -> dict:
    return {
        "name": "Contract",
        "triggers": [{"event": TRIGGER}],
        "steps": [{"id": "step", "kind": kind, "config": config}],
    }


def pointer(document, path: str):
    value = document
    for part in path.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@pytest.fixture
def minimal(request, recorder, monkeypatch):
    """The kind's minimal config, with what it needs around it (a loopback HTTP server,
    the registered test functions)."""
    monkeypatch.setenv("SIGNALBOX_PYTHON_MODULES", "tests.python_steps")
    kind = request.param
    row = MINIMAL.get(kind)
    assert row is not None, f"step kind {kind!r} has no row in MINIMAL of {__name__}"
    return kind, row.config(recorder.url), row.outcome


def test_every_registered_kind_has_a_row_in_the_contract_table():
    missing = sorted(set(KINDS) - set(MINIMAL))
    stale = sorted(set(MINIMAL) - set(KINDS))

    assert not missing, f"add a minimal config to MINIMAL for: {', '.join(missing)}"
    assert not stale, f"MINIMAL lists kinds nobody registers: {', '.join(stale)}"


@pytest.mark.parametrize("name", KINDS)
def test_a_kind_describes_itself_for_the_editor(name):
    kind = registry.get(name)

    assert kind.name == name and re.fullmatch(r"[a-z][a-z0-9_]*", name)
    for attribute in ("title", "description", "icon"):
        value = getattr(kind, attribute)
        assert isinstance(value, str) and value.strip(), f"{name}.{attribute} is empty"
    assert kind.group in GROUPS
    assert isinstance(kind.side_effects, bool)


@pytest.mark.parametrize("name", KINDS)
def test_a_kinds_config_schema_is_a_valid_json_schema_of_a_closed_object(name):
    schema = registry.get(name).config_schema

    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object"
    # Closed: a misspelt option is an error at validation, not silently ignored.
    assert schema.get("additionalProperties") is False
    kind = registry.get(name)
    for field in (*kind.expression_fields, *getattr(kind, "raw_fields", ())):
        assert field in schema["properties"], f"{name}: field {field!r} is not in the schema"


@pytest.mark.parametrize("minimal", KINDS, indirect=True)
def test_a_kinds_minimal_config_passes_validation_and_names_its_ports(minimal):
    name, config, _outcome = minimal
    kind = registry.get(name)

    assert list(jsonschema.Draft202012Validator(kind.config_schema).iter_errors(config)) == []
    parsed = parse_definition(definition_with(name, config))
    assert parsed.steps["step"].kind == name
    ports = kind.ports(config)
    assert isinstance(ports, list) and len(ports) == len(set(ports))
    assert all(isinstance(p, str) and PORT_NAME.fullmatch(p) for p in ports), ports
    assert "failure" not in ports  # every step has it; kinds do not list it


@pytest.mark.parametrize("minimal", KINDS, indirect=True)
def test_a_kinds_expression_paths_point_at_expressions_in_its_config(minimal):
    name, config, _outcome = minimal

    for path, expression in registry.get(name).expressions(config):
        assert pointer(config, path) == expression, f"{name}: {path} is not {expression!r}"
        expressions.check(expression)


@pytest.mark.parametrize("minimal", KINDS, indirect=True)
def test_a_kind_runs_its_minimal_config_and_gives_json(minimal, recorder):
    name, config, outcome = minimal
    kind = registry.get(name)

    if outcome == "error":
        with pytest.raises(StepError) as caught:
            kind.execute(config, context())
        assert caught.value.code and str(caught.value)
        return
    result = kind.execute(config, context())

    output = result.output if isinstance(result, StepResult) else result
    json.dumps(output, allow_nan=False)
    if isinstance(result, StepResult) and result.port:
        assert result.port in kind.ports(config)
    if outcome == "wait":
        assert isinstance(result, StepResult) and result.wait is not None
        assert result.wait.kind in ("timer", "event", "child")
    else:
        assert not (isinstance(result, StepResult) and result.wait is not None)
    if name == "http_request":
        assert recorder.requests[0].headers["Idempotency-Key"] == "sb-contract-0001"


@pytest.mark.parametrize("minimal", KINDS, indirect=True)
def test_an_invalid_config_is_refused_by_validation_with_a_path_into_it(minimal):
    name, config, _outcome = minimal
    required = registry.get(name).config_schema.get("required", [])
    invalid = [{**config, "no_such_option": True}, "not an object"]
    invalid += [{k: v for k, v in config.items() if k != field} for field in required]

    for bad in invalid:
        with pytest.raises(InvalidDefinition) as caught:
            parse_definition(definition_with(name, bad))
        paths = [p.path for p in caught.value.problems]
        assert any(p.startswith("/steps/0/config") for p in paths), (bad, paths)
        assert all(p.message for p in caught.value.problems)
