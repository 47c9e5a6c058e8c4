"""Webhook modes other than Standard Webhooks: GitHub signatures (computed the way GitHub
documents them), a shared secret in a header, and unauthenticated webhooks.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from tests.webhook_requests import (
    FORM,
    TYPE,
    assert_problem,
    github_signature,
    post,
)
from workflows.events.models import Event
from workflows.events.webhook_auth import verify
from workflows.events.webhooks import create_webhook


@pytest.fixture
def github_hook(db):
    _hook, secret = create_webhook(
        slug="gh",
        event_type="com.github.push",
        auth_mode="github",
        secret="It's a Secret to Everybody",
    )
    return secret


def test_a_github_delivery_with_a_correct_signature_is_accepted(client, github_hook):
    body = b'{"ref": "refs/heads/main"}'
    headers = {
        "X-Hub-Signature-256": github_signature(github_hook, body),
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-GitHub-Event": "push",
    }

    response = post(client, "gh", body, headers)

    assert response.status_code == 202, response.content
    event = Event.objects.get(pk=response.json()["id"])
    assert event.ce_id == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    assert event.type == "com.github.push" and event.data == {"ref": "refs/heads/main"}


def test_githubs_documented_example_signature_verifies(github_hook):
    # The test vector in GitHub's "Validating webhook deliveries" documentation.
    digest = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    headers = {"X-Hub-Signature-256": f"sha256={digest}"}

    verify("github", secret=github_hook, headers=headers, body=b"Hello, World!")


def test_a_github_redelivery_is_a_duplicate(client, github_hook):
    body = b'{"ref": "refs/heads/main"}'
    headers = {
        "X-Hub-Signature-256": github_signature(github_hook, body),
        "X-GitHub-Delivery": "delivery-1",
    }

    post(client, "gh", body, headers)
    again = post(client, "gh", body, headers)

    assert again.status_code == 200 and again.json()["duplicate"] is True


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 64,
        "sha1=0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33",
        "sha256=",
        "sha256=zzzznot-hex-✓",
        None,
    ],
)
def test_a_github_delivery_with_a_wrong_or_missing_signature_is_refused(
    client, github_hook, signature
):
    headers = {"X-GitHub-Delivery": "delivery-2"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature

    assert_problem(post(client, "gh", b'{"ref": "x"}', headers), 401)


def test_a_github_form_delivery_is_unwrapped_from_its_payload_field(client, github_hook):
    body = urlencode({"payload": json.dumps({"zen": "Keep it simple."})}).encode()
    headers = {
        "X-Hub-Signature-256": github_signature(github_hook, body),
        "X-GitHub-Delivery": "delivery-3",
    }

    response = post(client, "gh", body, headers, FORM)

    assert response.status_code == 202, response.content
    assert Event.objects.get(pk=response.json()["id"]).data == {"zen": "Keep it simple."}


@pytest.fixture
def header_hook(db):
    _hook, secret = create_webhook(
        slug="shared", event_type=TYPE, auth_mode="header", header_name="X-Token"
    )
    return secret


def test_header_mode_accepts_the_shared_secret_in_its_configured_header(client, header_hook):
    response = post(client, "shared", b'{"n": 1}', {"X-Token": header_hook})

    assert response.status_code == 202, response.content


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Token": "wrong"},
        {"X-Webhook-Secret": "the default header is not the configured one"},
        {},
    ],
)
def test_header_mode_refuses_a_wrong_or_missing_secret(client, header_hook, headers):
    assert_problem(post(client, "shared", b'{"n": 1}', headers), 401)


@pytest.mark.parametrize("id_header", ["Idempotency-Key", "X-Request-Id"])
def test_header_mode_deduplicates_by_the_senders_request_id(client, header_hook, id_header):
    headers = {"X-Token": header_hook, id_header: "req-1"}

    first = post(client, "shared", b'{"n": 1}', headers)
    again = post(client, "shared", b'{"n": 1}', headers)

    assert (first.status_code, again.status_code) == (202, 200)
    assert Event.objects.get().ce_id == "req-1"


def test_header_mode_without_a_request_id_makes_every_request_a_new_event(client, header_hook):
    for _ in range(2):
        assert post(client, "shared", b'{"n": 1}', {"X-Token": header_hook}).status_code == 202

    assert Event.objects.filter(source="/hooks/shared").count() == 2


def test_an_unauthenticated_webhook_accepts_anything_only_when_created_so(client, db):
    _hook, secret = create_webhook(slug="open", event_type=TYPE, auth_mode="none")

    assert secret is None
    assert post(client, "open", b'{"n": 1}', {}).status_code == 202
