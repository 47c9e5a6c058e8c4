"""Schema compatibility rules, one row per rule, judged in every mode.

Each rule says which reasons the BACKWARD check and the FORWARD check give (direction, JSON
pointer, a phrase of the message); FULL must give both, NONE nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflows.events.compatibility import (
    BACKWARD,
    FORWARD,
    FULL,
    MODES,
    NONE,
    InvalidSchema,
    check_compatibility,
    check_schema,
    schema_problems,
)

STRING, INTEGER, NUMBER = {"type": "string"}, {"type": "integer"}, {"type": "number"}


def obj(properties: dict, required=(), *, closed: bool = False, **more) -> dict:
    schema = {"type": "object", "properties": properties, "required": list(required), **more}
    if closed:
        schema["additionalProperties"] = False
    return schema


@dataclass(frozen=True)
class Rule:
    name: str
    old: object
    new: object
    backward: tuple = ()  # ((path, phrase), ...) the BACKWARD check must report
    forward: tuple = ()  # ... and the FORWARD check

    def expected(self, mode: str) -> set[tuple[str, str, str]]:
        found = set()
        if mode in (BACKWARD, FULL):
            found |= {(BACKWARD, path, phrase) for path, phrase in self.backward}
        if mode in (FORWARD, FULL):
            found |= {(FORWARD, path, phrase) for path, phrase in self.forward}
        return found


RULES = [
    Rule(
        "adding_a_required_field_without_default_breaks_backward",
        obj({"a": STRING, "b": STRING}, closed=True),
        obj({"a": STRING, "b": STRING}, ["b"], closed=True),
        backward=(("/required", "property 'b' became required: old data may lack it"),),
    ),
    Rule(
        "adding_a_required_field_with_a_default_breaks_nothing",
        obj({"a": STRING, "b": STRING}, closed=True),
        obj({"a": STRING, "b": {**STRING, "default": "n/a"}}, ["b"], closed=True),
    ),
    Rule(
        "making_a_required_field_optional_breaks_forward",
        obj({"a": STRING, "b": STRING}, ["b"], closed=True),
        obj({"a": STRING, "b": STRING}, closed=True),
        forward=(("/required", "property 'b' is no longer required: new data may lack it"),),
    ),
    Rule(
        "removing_an_enum_value_breaks_backward",
        {"enum": ["red", "green", "blue"]},
        {"enum": ["red", "green"]},
        backward=(("/enum", 'enum value "blue" was removed: old data may hold it'),),
    ),
    Rule(
        "adding_an_enum_value_breaks_forward",
        {"enum": ["red", "green"]},
        {"enum": ["red", "green", "blue"]},
        forward=(("/enum", 'enum value "blue" was added: new data may hold it'),),
    ),
    Rule(
        "narrowing_a_type_breaks_backward",
        {"type": ["string", "null"]},
        STRING,
        backward=(("/type", "type changed from null|string to string: old data may be null"),),
    ),
    Rule(
        "widening_a_type_breaks_forward",
        INTEGER,
        NUMBER,
        forward=(("/type", "type changed from integer to number: new data may be a number"),),
    ),
    Rule(
        "changing_a_type_breaks_both",
        STRING,
        INTEGER,
        backward=(("/type", "type changed from string to integer: old data may be a string"),),
        forward=(("/type", "type changed from string to integer: new data may be an integer"),),
    ),
    Rule(
        "raising_a_minimum_breaks_backward",
        {**NUMBER, "minimum": 0},
        {**NUMBER, "minimum": 5},
        backward=(("/minimum", "minimum changed from 0 to 5: old data may hold numbers < 5"),),
    ),
    Rule(
        "raising_a_maximum_breaks_forward",
        {**NUMBER, "maximum": 10},
        {**NUMBER, "maximum": 100},
        forward=(("/maximum", "maximum changed from 10 to 100: new data may hold numbers > 10"),),
    ),
    Rule(
        "making_a_minimum_exclusive_breaks_backward",
        {**NUMBER, "minimum": 0},
        {**NUMBER, "exclusiveMinimum": 0},
        backward=(("/exclusiveMinimum", "lower bound changed from >= 0 to > 0"),),
    ),
    Rule(
        "an_exclusive_integer_bound_equal_to_an_inclusive_one_breaks_nothing",
        {**INTEGER, "exclusiveMinimum": 3},
        {**INTEGER, "minimum": 4},
    ),
    Rule(
        "lowering_max_length_breaks_backward",
        {**STRING, "maxLength": 10},
        {**STRING, "maxLength": 5},
        backward=(
            (
                "/maxLength",
                "maxLength changed from 10 to 5: old data may hold strings "
                "with more than 5 characters",
            ),
        ),
    ),
    Rule(
        "adding_min_length_breaks_backward",
        STRING,
        {**STRING, "minLength": 1},
        backward=(("/minLength", "minLength added (1)"),),
    ),
    Rule(
        "adding_a_pattern_breaks_backward",
        STRING,
        {**STRING, "pattern": "^[A-Z]{3}$"},
        backward=(("/pattern", 'pattern added ("^[A-Z]{3}$")'),),
    ),
    Rule(
        "changing_a_format_counts_as_a_possible_break_backward",
        STRING,
        {**STRING, "format": "email"},
        backward=(("/format", 'format added ("email")'),),
    ),
    Rule(
        "lowering_max_items_breaks_backward",
        {"type": "array", "maxItems": 5},
        {"type": "array", "maxItems": 3},
        backward=(("/maxItems", "maxItems changed from 5 to 3"),),
    ),
    Rule(
        "raising_min_items_breaks_backward",
        {"type": "array"},
        {"type": "array", "minItems": 1},
        backward=(
            ("/minItems", "minItems added (1): old data may hold arrays with fewer than 1 items"),
        ),
    ),
    Rule(
        "requiring_unique_items_breaks_backward",
        {"type": "array"},
        {"type": "array", "uniqueItems": True},
        backward=(("/uniqueItems", "old data may hold arrays with duplicate items"),),
    ),
    Rule(
        "widening_the_item_type_breaks_forward",
        {"type": "array", "items": INTEGER},
        {"type": "array", "items": NUMBER},
        forward=(("/items/type", "type changed from integer to number"),),
    ),
    Rule(
        "closing_additional_properties_breaks_backward",
        obj({"a": STRING}),
        obj({"a": STRING}, closed=True),
        backward=(("/additionalProperties", "additionalProperties: false was added"),),
    ),
    Rule(
        "opening_additional_properties_breaks_forward",
        obj({"a": STRING}, closed=True),
        obj({"a": STRING}),
        forward=(("/additionalProperties", "additionalProperties: false was removed"),),
    ),
    Rule(
        "adding_an_optional_property_to_an_open_model_breaks_backward",
        obj({"a": STRING}),
        obj({"a": STRING, "b": INTEGER}),
        backward=(("/properties/b", "property 'b' was added to an open content model"),),
    ),
    Rule(
        "adding_an_optional_property_to_a_closed_model_breaks_forward",
        obj({"a": STRING}, closed=True),
        obj({"a": STRING, "b": INTEGER}, closed=True),
        forward=(("/properties/b", "property 'b' was added to a closed content model"),),
    ),
    Rule(
        "removing_a_property_from_a_closed_model_breaks_backward",
        obj({"a": STRING, "b": INTEGER}, closed=True),
        obj({"a": STRING}, closed=True),
        backward=(("/properties/b", "property 'b' was removed from a closed content model"),),
    ),
    Rule(
        "removing_a_property_from_an_open_model_breaks_forward",
        obj({"a": STRING, "b": INTEGER}),
        obj({"a": STRING}),
        forward=(("/properties/b", "property 'b' was removed from an open content model"),),
    ),
    Rule(
        "changing_a_nested_field_is_reported_at_its_path",
        obj({"address": obj({"zip": STRING}, ["zip"])}, ["address"]),
        obj({"address": obj({"zip": INTEGER}, ["zip"])}, ["address"]),
        backward=(("/properties/address/properties/zip/type", "old data may be a string"),),
        forward=(("/properties/address/properties/zip/type", "new data may be an integer"),),
    ),
    Rule(
        "a_change_behind_a_ref_is_followed",
        {"$defs": {"money": NUMBER}, **obj({"total": {"$ref": "#/$defs/money"}})},
        {"$defs": {"money": INTEGER}, **obj({"total": {"$ref": "#/$defs/money"}})},
        backward=(
            (
                "/$defs/money/type",
                "type changed from number to integer: old data may be a number, which the new "
                "schema rejects (through the $ref at /properties/total)",
            ),
        ),
    ),
    Rule(
        "changing_a_const_breaks_both",
        {"const": "v1"},
        {"const": "v2"},
        backward=(("/const", 'const changed from "v1" to "v2": old data may hold "v1"'),),
        forward=(("/const", 'const changed from "v1" to "v2": new data may hold "v2"'),),
    ),
    Rule(
        "tightening_multiple_of_breaks_backward",
        {**NUMBER, "multipleOf": 2},
        {**NUMBER, "multipleOf": 4},
        backward=(("/multipleOf", "multipleOf changed from 2 to 4"),),
    ),
    Rule(
        "making_a_field_nullable_with_any_of_breaks_forward",
        STRING,
        {"anyOf": [STRING, {"type": "null"}]},
        forward=(
            ("/type", "anyOf alternative 1 of the new schema: type changed from string to null"),
        ),
    ),
    Rule(
        "making_a_field_nullable_with_one_of_breaks_forward",
        STRING,
        {"oneOf": [STRING, {"type": "null"}]},
        forward=(("/type", "oneOf alternative 1 of the new schema"),),
    ),
    Rule(
        "a_one_of_it_cannot_analyse_counts_as_a_possible_break",
        {"oneOf": [STRING, INTEGER]},
        {"oneOf": [STRING, NUMBER]},
        forward=(("/oneOf", "cannot prove that new data matches exactly one"),),
    ),
    Rule(
        "adding_a_not_counts_as_a_possible_break",
        STRING,
        {**STRING, "not": {"const": ""}},
        backward=(("/not", "changes to not cannot be checked for compatibility"),),
    ),
    Rule(
        "changing_only_annotations_breaks_nothing",
        obj({"a": {**STRING, "description": "old words"}}, title="Order"),
        obj({"a": {**STRING, "description": "new words", "examples": ["x"]}}, title="Orders"),
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_rule_breaks_exactly_the_modes_it_should_with_its_reason(rule: Rule, mode: str):
    found = check_compatibility(rule.old, rule.new, mode)

    assert {(i.direction, i.path) for i in found} == {
        (direction, path) for direction, path, _phrase in rule.expected(mode)
    }, [i.as_dict() for i in found]
    for direction, path, phrase in rule.expected(mode):
        messages = [i.message for i in found if (i.direction, i.path) == (direction, path)]
        assert any(phrase in m for m in messages), (phrase, messages)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_every_reason_points_into_the_old_or_the_new_schema(rule: Rule):
    for reason in check_compatibility(rule.old, rule.new, FULL):
        assert _resolves(rule.old, reason.path) or _resolves(rule.new, reason.path), reason


def test_none_accepts_a_change_that_breaks_every_other_mode():
    old, new = obj({"a": STRING}, ["a"], closed=True), {"type": "array"}

    assert check_compatibility(old, new, NONE) == []
    assert all(check_compatibility(old, new, mode) for mode in (BACKWARD, FORWARD, FULL))


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="compatibility must be one of"):
        check_compatibility(STRING, STRING, "TRANSITIVE")


def test_recursive_schemas_are_compared_without_looping():
    tree = {
        "$defs": {
            "node": obj(
                {
                    "value": INTEGER,
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                closed=True,
            )
        },
        "$ref": "#/$defs/node",
    }
    deeper = copy.deepcopy(tree)
    deeper["$defs"]["node"]["properties"]["value"] = STRING

    assert check_compatibility(tree, copy.deepcopy(tree), FULL) == []
    reasons = check_compatibility(tree, deeper, BACKWARD)
    assert [(r.path, r.message.split(":")[0]) for r in reasons] == [
        ("/$defs/node/properties/value/type", "type changed from integer to string")
    ]


def test_a_reason_is_a_json_pointer_with_escaped_names():
    old = obj({"a/b": STRING, "c~d": STRING})
    new = obj({"a/b": INTEGER, "c~d": INTEGER})

    paths = {r.path for r in check_compatibility(old, new, BACKWARD)}

    assert paths == {"/properties/a~1b/type", "/properties/c~0d/type"}


@pytest.mark.parametrize(
    ("schema", "path", "phrase"),
    [
        pytest.param({"type": "strng"}, "/type", "is not valid", id="an_unknown_type"),
        pytest.param(
            {"type": "string", "pattern": "("}, "/pattern", "is not a 'regex'", id="a_broken_regex"
        ),
        pytest.param(
            {"properties": {"a": {"minimum": "1"}}},
            "/properties/a/minimum",
            "is not of type 'number'",
            id="a_bound_that_is_not_a_number",
        ),
        pytest.param(
            {"$ref": "https://example.com/order.json"}, "/$ref", "points outside", id="a_remote_ref"
        ),
        pytest.param({"$ref": "#/$defs/missing"}, "/$ref", "does not resolve", id="a_dangling_ref"),
        pytest.param(["type", "string"], "", "must be a JSON object", id="not_an_object"),
        pytest.param(
            {"$schema": "http://json-schema.org/draft-07/schema#"},
            "/$schema",
            "only JSON Schema draft 2020-12",
            id="another_draft",
        ),
        pytest.param(
            {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
            "/$defs/a",
            "refers back to itself without descending into the data",
            id="a_reference_loop_that_would_never_finish_validating",
        ),
    ],
)
def test_an_invalid_json_schema_is_refused_with_the_problem(schema, path, phrase):
    problems = schema_problems(schema)

    assert [p["path"] for p in problems] == [path]
    assert phrase in problems[0]["message"]
    with pytest.raises(InvalidSchema):
        check_schema(schema)


def test_valid_schemas_with_local_and_recursive_refs_pass_the_check():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {
            "id": {"type": "string", "format": "uuid"},
            "node": obj({"next": {"$ref": "#/$defs/node"}}),
        },
        "type": "object",
        "properties": {
            "id": {"$ref": "#/$defs/id"},
            "list": {"$ref": "#/$defs/node"},
            # data that merely looks like a reference is data, not a reference
            "raw": {"const": {"$ref": "https://example.com/elsewhere"}},
        },
    }

    assert schema_problems(schema) == []
    check_schema(schema)


# --- soundness: a change the checker accepts never rejects data it should accept ----------

LEAF_TYPES = ["null", "boolean", "integer", "number", "string"]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.sampled_from([0.5, -1.5, 2.0])
    | st.sampled_from(["", "a", "ab", "abc", "A"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def schemas(draw, depth: int = 0):
    kind = draw(
        st.sampled_from(["leaf", "enum", "object", "array", "any"][: 5 if depth < 2 else 3])
    )
    schema: dict = {}
    if kind == "leaf":
        types = draw(st.lists(st.sampled_from(LEAF_TYPES), min_size=1, max_size=2, unique=True))
        schema["type"] = types[0] if len(types) == 1 else types
        if draw(st.booleans()):
            schema[draw(st.sampled_from(["minimum", "maximum", "exclusiveMinimum"]))] = draw(
                st.integers(-3, 3)
            )
        if draw(st.booleans()):
            schema[draw(st.sampled_from(["minLength", "maxLength"]))] = draw(st.integers(0, 2))
    elif kind == "enum":
        schema["enum"] = draw(st.lists(json_values, min_size=1, max_size=3))
    elif kind == "object":
        schema["type"] = "object"
        names = draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True))
        schema["properties"] = {n: draw(schemas(depth + 1)) for n in names}
        schema["required"] = draw(
            st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True)
        )
        choice = draw(st.sampled_from([None, False, "schema"]))
        if choice is False:
            schema["additionalProperties"] = False
        elif choice == "schema":
            schema["additionalProperties"] = draw(schemas(depth + 1))
    elif kind == "array":
        schema["type"] = "array"
        if draw(st.booleans()):
            schema["items"] = draw(schemas(depth + 1))
        if draw(st.booleans()):
            schema["maxItems"] = draw(st.integers(0, 2))
    if depth < 2 and draw(st.integers(0, 5)) == 0:
        schema = {"anyOf": [schema, draw(schemas(depth + 1))]}
    return schema


@st.composite
def edits(draw, schema):
    """`schema` with one small random edit somewhere: a keyword dropped, a bound moved, a
    type or enum value added, or the whole thing replaced."""
    schema = copy.deepcopy(schema)
    nodes = [n for n in _nodes(schema) if n]
    if not nodes or draw(st.integers(0, 6)) == 0:
        return draw(schemas())
    node = draw(st.sampled_from(nodes))
    key = draw(st.sampled_from(sorted(node)))
    action = draw(st.sampled_from(["drop", "move", "widen"]))
    if action == "drop":
        del node[key]
    elif action == "move" and isinstance(node[key], int) and not isinstance(node[key], bool):
        node[key] = max(0, node[key] + draw(st.sampled_from([-1, 1])))
    elif action == "widen" and key == "enum":
        node[key] = [*node[key], draw(json_values)]
    elif action == "widen" and key == "type":
        node[key] = sorted(
            {
                *([node[key]] if isinstance(node[key], str) else node[key]),
                draw(st.sampled_from(LEAF_TYPES)),
            }
        )
    return schema


@st.composite
def changes(draw):
    old = draw(schemas())
    return old, draw(edits(old))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(change=changes(), instances=st.lists(json_values, min_size=1, max_size=30))
def test_a_change_judged_backward_compatible_never_rejects_old_data(change, instances):
    old, new = change
    if check_compatibility(old, new, BACKWARD):
        return
    old_ok = jsonschema.Draft202012Validator(old)
    new_ok = jsonschema.Draft202012Validator(new)
    for instance in instances:
        if old_ok.is_valid(instance):
            assert new_ok.is_valid(instance), (old, new, instance)


@settings(max_examples=100, deadline=None)
@given(schema=schemas())
def test_a_schema_is_fully_compatible_with_itself(schema):
    assert check_compatibility(schema, copy.deepcopy(schema), FULL) == []


def _nodes(schema):
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _nodes(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _nodes(value)


def _resolves(schema, pointer: str) -> bool:
    node = schema
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True
