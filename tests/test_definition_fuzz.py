"""Hostile workflow definitions: whatever arrives (wrong types, extreme numbers, odd text,
deep nesting, any bytes), the parser answers with a Definition or its own InvalidDefinition
(and a file that cannot be read with UnreadableDefinition), never another exception."""

from __future__ import annotations

import json
import math

import yaml
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from workflows.authoring.definition_files import UnreadableDefinition, load_definition_text
from workflows.authoring.definitions import parse_definition
from workflows.core.definition import Definition, InvalidDefinition
from workflows.steps import registry

KINDS = sorted(registry.all_kinds())
BOUNDED = hypothesis_settings(max_examples=100, derandomize=True, database=None)
# YAML writing and reading of 70 kB strings is slow: fewer examples for the round trip.
ROUND_TRIP = hypothesis_settings(max_examples=30, derandomize=True, database=None)

# Numbers at and past every range a field, a database column or a JSON reader cares about.
EXTREME_NUMBERS = (
    st.sampled_from(
        [0, -1, 1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**400, 1e308, -0.0, 5e-324]
    )
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
)
# Text a person would not type: control characters, NUL, lone surrogates, BOMs, combining
# marks, right-to-left overrides, a "{{" that never closes, CEL and Python look-alikes.
HOSTILE_TEXT = st.sampled_from(
    [
        "",
        "\x00",
        "\ud800",
        "\ufeff",
        "\u202e",
        "e\u0301" * 50,
        "{{",
        "}}",
        "{{ }}",
        "{{ event.data[",
        "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
        "(" * 1500,
        "[" * 1500,
        "event.data.__class__",
        "size('x' * 99999999)",
        "'%s' % {}",
        "__import__('os').system('id')",
        "${jndi:ldap://127.0.0.1/a}",
        "x" * 70_000,
    ]
) | st.text(max_size=80)

SCALARS = st.none() | st.booleans() | EXTREME_NUMBERS | HOSTILE_TEXT
JSON_LIKE = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12) | HOSTILE_TEXT, inner, max_size=4)
    ),
    max_leaves=20,
)


def deeply_nested(depth: int):
    value: object = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def assert_parser_answers(raw) -> None:
    try:
        parsed = parse_definition(raw)
    except InvalidDefinition as exc:
        assert exc.problems, "an InvalidDefinition names at least one problem"
        for problem in exc.problems:
            assert problem.path.startswith("/") and problem.message
    else:
        assert isinstance(parsed, Definition)


@st.composite
def hostile_steps(draw):
    """A step of a real kind whose config keys are its own, with hostile values."""
    kind = draw(st.sampled_from(KINDS))
    properties = list(registry.all_kinds()[kind].config_schema.get("properties", {}))
    keys = draw(st.lists(st.sampled_from(properties), unique=True)) if properties else []
    step = {
        "id": draw(st.sampled_from(["a", "b", "step-1"]) | HOSTILE_TEXT),
        "kind": kind,
        "config": {key: draw(JSON_LIKE) for key in keys},
    }
    for name in ("after", "retry", "timeout_seconds", "join"):
        if draw(st.booleans()):
            step[name] = draw(JSON_LIKE)
    return step


@st.composite
def hostile_definitions(draw):
    definition: dict = {
        "name": draw(st.just("fuzz") | HOSTILE_TEXT | EXTREME_NUMBERS),
        "steps": draw(st.lists(hostile_steps(), max_size=3)),
    }
    if draw(st.booleans()):
        definition["triggers"] = [
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "event": HOSTILE_TEXT,
                        "filter": HOSTILE_TEXT,
                        "schedule": HOSTILE_TEXT,
                        "webhook": HOSTILE_TEXT,
                        "manual": SCALARS,
                    },
                )
            )
        ]
    for name in ("vars", "concurrency", "edges", "description"):
        if draw(st.booleans()):
            definition[name] = draw(JSON_LIKE)
    return definition


@BOUNDED
@given(raw=JSON_LIKE)
@example(raw=deeply_nested(5000))
@example(raw={"name": "deep", "steps": [], "vars": deeply_nested(5000)})
def test_any_json_value_is_parsed_or_refused_with_problems(raw):
    assert_parser_answers(raw)


@BOUNDED
@given(raw=hostile_definitions())
@example(
    raw={
        "name": "n",
        "concurrency": {"max_runs": 2**64},
        "steps": [
            {"id": "a", "kind": "log", "config": {"message": "hi"}, "timeout_seconds": 1e999}
        ],
    }
)
@example(
    raw={
        "name": "n",
        "triggers": [{"event": "t", "filter": "(" * 1900}],
        "steps": [{"id": "a", "kind": "log", "config": {"message": "{{ " + "[" * 5000 + " }}"}}],
    }
)
@example(
    raw={
        "name": "n",
        "steps": [
            {"id": "a", "kind": "delay", "config": {"seconds": math.inf}},
            {"id": "b", "kind": "for_each", "config": {"items": "[1]", "do": deeply_nested(3000)}},
        ],
    }
)
def test_a_definition_with_hostile_values_is_parsed_or_refused_with_problems(raw):
    assert_parser_answers(raw)


@BOUNDED
@given(body=st.binary(max_size=300), yaml_format=st.booleans())
@example(body=b"\xef\xbb\xbf{}", yaml_format=False)
@example(body='{"name": "x"}'.encode("utf-16"), yaml_format=False)
@example(body=b"name: !!python/object/apply:os.system ['id']\nsteps: []", yaml_format=True)
@example(
    body=b"name: 2026-12-06\nsteps: [{id: a, kind: log, config: {message: .nan}}]", yaml_format=True
)
@example(body=b"name: x\nsteps: [{id: a, kind: delay, config: {seconds: .inf}}]", yaml_format=True)
@example(body=b"name: !!binary aGk=\nsteps: []", yaml_format=True)
@example(body=b"a: &x [1]\nb: *x", yaml_format=True)
@example(body=b"[" * 100_000, yaml_format=True)
@example(body=b"[" * 100_000, yaml_format=False)
def test_any_file_is_read_and_parsed_or_refused_with_a_message(body, yaml_format):
    try:
        raw = load_definition_text(body, yaml_format=yaml_format)
    except UnreadableDefinition as exc:
        assert str(exc)
        return
    assert_parser_answers(raw)


@ROUND_TRIP
@given(raw=hostile_definitions())
def test_a_hostile_definition_survives_the_trip_through_yaml_and_json(raw):
    """What the export writes (YAML, JSON) reads back into the same verdict."""
    for yaml_format in (True, False):
        try:
            text = (
                yaml.safe_dump(raw, allow_unicode=True)
                if yaml_format
                else json.dumps(raw, ensure_ascii=False, allow_nan=True)
            )
        except (yaml.YAMLError, ValueError, RecursionError):
            continue  # our own writer refused it; the reader is what is under test
        try:
            reread = load_definition_text(
                text.encode("utf-8", "surrogatepass"), yaml_format=yaml_format
            )
        except UnreadableDefinition:
            continue
        assert_parser_answers(reread)
