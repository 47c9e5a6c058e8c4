"""The OpenAPI description of /api/v1/ (workflows/api/openapi.yaml) against the code: it is
valid OpenAPI 3.1, it describes every route and method and nothing else, it is served at
/api/v1/openapi.json, and schemathesis finds no 5xx and no answer outside it on the real
server."""

from __future__ import annotations

import os
import random
import re

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import cloudevent, log_step
from workflows.access.tokens import create_api_token
from workflows.api import urls as api_urls
from workflows.api.openapi import description
from workflows.authoring.definitions import publish_workflow, put_workflow
from workflows.events.models import DeadLetter
from workflows.events.schemas import register_schema
from workflows.events.webhooks import create_webhook
from workflows.runs.models import Run

PREFIX = "/api/v1/"
METHODS = ("get", "put", "post", "patch", "delete")
# Django's path converters, as the regular expression each matches (a path parameter's
# pattern in the description must accept no more than its converter does).
CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")

# `make test`: bounded and repeatable, a few examples for every operation in both modes, from
# one fixed seed. `make fuzz` (SIGNALBOX_FUZZ=full): many more, from a new seed each run
# (SIGNALBOX_FUZZ_SEED repeats one).
BOUNDED = ((GenerationMode.POSITIVE, 5), (GenerationMode.NEGATIVE, 3))
FULL = ((GenerationMode.POSITIVE, 100), (GenerationMode.NEGATIVE, 50))
FULL_RUN = os.environ.get("SIGNALBOX_FUZZ") == "full"
EXAMPLES = FULL if FULL_RUN else BOUNDED
SEED = int(os.environ.get("SIGNALBOX_FUZZ_SEED") or random.randrange(2**32)) if FULL_RUN else 0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def routes() -> dict[str, object]:
    """Each route under /api/v1/ as the OpenAPI path it should be described by."""
    found = {}
    for pattern in api_urls.urlpatterns:
        route = str(pattern.pattern)
        found[PREFIX + CONVERTER.sub(lambda m: "{" + m.group(2) + "}", route)] = pattern
    return found


def described_operations() -> list[tuple[str, str]]:
    return [
        (path, method)
        for path, item in description()["paths"].items()
        for method in METHODS
        if method in item
    ]


def test_the_description_is_valid_openapi_3_1():
    document = description()
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises OpenAPIValidationError naming what is wrong


def test_every_api_route_is_described_and_every_described_path_is_routed():
    described = set(description()["paths"])
    routed = set(routes())
    assert routed - described == set(), "routes without a description"
    assert described - routed == set(), "described paths that no route serves"


def test_every_path_parameter_is_described_with_the_converters_name():
    for path, pattern in routes().items():
        item = description()["paths"][path]
        declared = {p["name"] for p in _parameters(item) if p["in"] == "path"}
        assert declared == set(pattern.pattern.converters), path


def _parameters(item: dict) -> list[dict]:
    components = description()["components"]["parameters"]
    return [
        components[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
        for p in item.get("parameters", [])
    ]


@pytest.fixture
def admin_headers(db) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_api_token(name='openapi', role='admin')[1]}"}


def _sample_path(path: str) -> str:
    samples = {"slug": "no-such-flow", "name": "no-such-name", "host": "nowhere.test"}
    return re.sub(r"\{(\w+)\}", lambda m: samples.get(m.group(1), "424242"), path)


def test_each_route_answers_405_exactly_for_the_methods_not_described(client, admin_headers):
    """A described method is served (whatever else it answers), an undescribed one is not."""
    for path, item in description()["paths"].items():
        url = _sample_path(path)
        for method in METHODS:
            response = client.generic(method.upper(), url, headers=admin_headers)
            if method in item:
                assert response.status_code != 405, f"{method.upper()} {path} is not served"
            else:
                assert response.status_code == 405, f"{method.upper()} {path} is not described"


def test_the_description_is_served_to_a_token_and_refused_without_one(client, admin_headers):
    refused = client.get("/api/v1/openapi.json")
    assert refused.status_code == 401
    assert refused["Content-Type"].startswith("application/problem+json")
    served = client.get("/api/v1/openapi.json", headers=admin_headers)
    assert served.status_code == 200
    assert served.json() == description()


def test_a_try_run_is_a_run_as_described(client, admin_headers):
    """A try run's version is an unnumbered snapshot: `version` is null (schemathesis found
    the description saying integer)."""
    put_workflow(slug="tried", raw={"name": "Tried", "steps": [log_step("only")]})
    started = client.post(
        "/api/v1/workflows/tried/try",
        data=b'{"data": {"n": 1}}',
        content_type="application/json",
        headers=admin_headers,
    )
    assert started.status_code == 202, started.content
    run = client.get(f"/api/v1/runs/{started.json()['run']}", headers=admin_headers).json()

    assert run["origin"] == "try" and run["version"] is None
    run_schema = Draft202012Validator({**description(), "$ref": "#/components/schemas/Run"})
    assert list(run_schema.iter_errors(run)) == []


# --- schemathesis against the real server ---------------------------------------------------------
@pytest.fixture
def known(api) -> dict[str, object]:
    """Things that exist, so that half of the examples reach past "404 no such …": a published
    workflow with a manual trigger, a failed run of it, a stored event, a dead letter, an event
    type with a schema version and a webhook. Returned as path parameter values."""
    slug, event_type = "openapi-flow", "com.example.openapi"
    put_workflow(
        slug=slug,
        raw={
            "name": "OpenAPI",
            "triggers": [{"event": event_type}, {"manual": True}],
            "steps": [log_step("only")],
        },
    )
    version = publish_workflow(slug=slug)
    run = Run.objects.create(
        workflow=version.workflow, version=version, status="failed", error="boom"
    )
    letter = DeadLetter.objects.create(kind="event", reason="test", payload={"data": {"n": 1}})
    register_schema(event_type=event_type, schema={"type": "object"})
    create_webhook(slug="openapi-hook", event_type=event_type)
    sent = api.post(
        "/api/v1/events",
        json=cloudevent(event_type, id="openapi-1", data={"n": 1}),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert sent.status_code == 202, sent.text
    return {
        "slug": slug,
        "run_id": run.pk,
        "event_id": sent.json()["id"],
        "letter_id": letter.pk,
        "name": event_type,
        "number": 1,
        "batch_id": 1,
        "host": "127.0.0.1:9",
    }


@pytest.mark.timeout(3600 if FULL_RUN else 180)
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_description(
    stack, api_token, known
):
    """Every operation, with positive and negative examples, against the running server (its
    own database and Redis) with an admin token; path parameters are random or name what
    exists. Failures are collected over all operations so that one run names every mismatch."""
    schema = schemathesis.openapi.from_dict(description())
    headers = {"Authorization": f"Bearer {api_token}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        names = re.findall(r"\{(\w+)\}", operation.path)
        for mode, examples in EXAMPLES:
            strategy = operation.as_strategy(generation_mode=mode)
            if names:
                path_parameters = {name: known[name] for name in names}
                strategy |= operation.as_strategy(
                    generation_mode=mode, path_parameters=path_parameters
                )
            failures.extend(
                _exercise(operation.label, mode, strategy, examples, stack.base_url, headers)
            )
    seed = f" (SIGNALBOX_FUZZ_SEED={SEED} repeats this run)" if FULL_RUN else ""
    assert failures == [], f"examples {EXAMPLES}{seed}:\n\n" + "\n\n".join(failures[:20])


def _exercise(label, mode, strategy, examples: int, base_url, headers) -> list[str]:
    found: list[str] = []

    @hypothesis_settings(
        max_examples=examples,
        derandomize=not FULL_RUN,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def exercise(case):
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (AssertionError, FailureGroup) as exc:
            if len(found) < 3:
                found.append(f"{label} ({mode.value}): {exc}")

    if FULL_RUN:
        exercise = hypothesis.seed(SEED)(exercise)  # new each run, named in the failure
    exercise()
    return found
