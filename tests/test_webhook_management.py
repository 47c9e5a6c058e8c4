"""Creating webhooks: generated and stored secrets, invalid settings and taken slugs, in the
service, over the management API and on the command line.
"""

from __future__ import annotations

import io
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from standardwebhooks import Webhook as StandardSigner

from tests.webhook_requests import (
    JSON,
    TYPE,
    assert_problem,
    post,
)
from workflows.access.tokens import create_api_token
from workflows.events.models import Webhook
from workflows.events.webhook_auth import standard_key
from workflows.events.webhooks import InvalidWebhook, create_webhook
from workflows.infra import crypto

# --- Creating webhooks ------------------------------------------------------------------


def test_a_standard_webhook_gets_a_generated_whsec_secret_the_reference_library_accepts(db):
    _hook, secret = create_webhook(slug="gen", event_type=TYPE)

    assert secret.startswith("whsec_")
    assert len(standard_key(secret)) == 32
    StandardSigner(secret)  # the reference library parses it


def test_the_secret_is_stored_encrypted_never_in_plaintext(db):
    hook, secret = create_webhook(slug="vault", event_type=TYPE, auth_mode="github")

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {Webhook._meta.db_table} WHERE id = %s", [hook.pk])
        row = cursor.fetchone()
    assert not any(secret in str(column) for column in row)
    assert crypto.decrypt(Webhook.objects.get(pk=hook.pk).secret_encrypted) == secret


@pytest.mark.parametrize(
    ("fields", "wrong"),
    [
        ({"slug": "has space"}, "slug"),
        ({"slug": ""}, "slug"),
        ({"event_type": ""}, "event_type"),
        ({"event_type": "has space"}, "event_type"),
        ({"auth_mode": "basic"}, "auth_mode"),
        ({"secret": "not base64 at all!"}, "secret"),
        ({"secret": "whsec_c2hvcnQ="}, "secret"),
        ({"auth_mode": "github", "secret": "short"}, "secret"),
        ({"auth_mode": "none", "secret": "a" * 32}, "secret"),
        ({"auth_mode": "header", "header_name": "Bad Header"}, "header_name"),
        ({"auth_mode": "header", "header_name": "Host"}, "header_name"),
        ({"header_name": "X-Token"}, "header_name"),
    ],
)
def test_a_webhook_is_refused_when_its_settings_are_invalid(db, fields, wrong):
    arguments = {"slug": "ok", "event_type": TYPE, **fields}

    with pytest.raises(InvalidWebhook) as caught:
        create_webhook(**arguments)
    assert caught.value.field == wrong
    assert not Webhook.objects.exists()


def test_a_slug_cannot_be_taken_twice(db):
    create_webhook(slug="twice", event_type=TYPE)

    with pytest.raises(InvalidWebhook, match="already exists"):
        create_webhook(slug="twice", event_type=TYPE)


# --- Management API ---------------------------------------------------------------------


def bearer(role: str) -> dict[str, str]:
    _token, plaintext = create_api_token(name=f"t-{role}-{uuid.uuid4().hex[:6]}", role=role)
    return {"Authorization": f"Bearer {plaintext}"}


def test_an_admin_creates_a_webhook_and_sees_its_secret_once(client, db):
    admin = bearer("admin")
    response = client.post(
        "/api/v1/webhooks",
        {"slug": "api-made", "event_type": TYPE},
        content_type=JSON,
        headers=admin,
    )

    assert response.status_code == 201, response.content
    created = response.json()
    assert created["url"] == "http://testserver/hooks/api-made"
    assert created["auth_mode"] == "standard" and created["secret"].startswith("whsec_")
    assert response["Cache-Control"] == "no-store"
    listed = client.get("/api/v1/webhooks", headers=bearer("viewer"))
    assert listed.status_code == 200
    assert [h["slug"] for h in listed.json()["webhooks"]] == ["api-made"]
    assert created["secret"] not in listed.content.decode()
    assert "secret" not in listed.json()["webhooks"][0]


def test_the_created_secret_verifies_requests_to_the_new_url(client, db):
    created = client.post(
        "/api/v1/webhooks",
        {
            "slug": "roundtrip",
            "event_type": TYPE,
            "auth_mode": "header",
            "header_name": "X-Token",
            "secret": "s3cret-s3cret-s3cret",
        },
        content_type=JSON,
        headers=bearer("admin"),
    ).json()

    response = post(client, "roundtrip", b"{}", {"X-Token": created["secret"]})

    assert created["header_name"] == "X-Token"
    assert response.status_code == 202


def test_creating_a_webhook_needs_the_admin_role(client, db):
    response = client.post(
        "/api/v1/webhooks",
        {"slug": "nope", "event_type": TYPE},
        content_type=JSON,
        headers=bearer("operator"),
    )

    assert_problem(response, 403)
    assert_problem(client.get("/api/v1/webhooks"), 401)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"slug": "bad slug", "event_type": TYPE}, 400),
        ({"slug": "x", "event_type": TYPE, "colour": "red"}, 400),
        ({"event_type": TYPE}, 400),
        (["not", "an", "object"], 400),
    ],
)
def test_the_api_refuses_invalid_webhooks_with_a_problem(client, db, body, status):
    response = client.post("/api/v1/webhooks", body, content_type=JSON, headers=bearer("admin"))

    assert_problem(response, status)


def test_the_api_answers_409_for_a_slug_that_is_taken(client, db):
    create_webhook(slug="taken", event_type=TYPE)
    response = client.post(
        "/api/v1/webhooks",
        {"slug": "taken", "event_type": TYPE},
        content_type=JSON,
        headers=bearer("admin"),
    )

    assert_problem(response, 409)


# --- Command line -----------------------------------------------------------------------


def run_command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("webhooks", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_cli_creates_a_webhook_and_prints_its_path_and_secret_once(db):
    out, err = run_command("create", "cli-made", "--type", TYPE, "--auth", "github")

    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["url"].strip() == "/hooks/cli-made"
    secret = lines["secret"].strip()
    hook = Webhook.objects.get(slug="cli-made")
    assert hook.auth_mode == "github" and crypto.decrypt(hook.secret_encrypted) == secret
    assert "only this once" in err
    listed, _ = run_command("list")
    assert "/hooks/cli-made" in listed and TYPE in listed and secret not in listed


def test_the_cli_reads_a_given_secret_from_stdin(db, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("whsec_" + "C" * 44 + "\n"))

    out, _ = run_command("create", "piped", "--type", TYPE, "--secret-stdin")

    assert out.splitlines()[-1] == "secret: whsec_" + "C" * 44


@pytest.mark.parametrize(
    "args",
    [
        ("create", "bad slug", "--type", TYPE),
        ("create", "ok", "--type", TYPE, "--auth", "basic"),
        ("create", "ok"),
        ("create", "ok", "--type", TYPE, "--header-name", "X-Token"),
        ("frobnicate",),
    ],
)
def test_the_cli_refuses_bad_input_with_a_clear_error(db, args):
    with pytest.raises(CommandError):
        run_command(*args)
    assert not Webhook.objects.exists()


def test_the_cli_refuses_a_slug_that_is_taken(db):
    create_webhook(slug="taken", event_type=TYPE)

    with pytest.raises(CommandError, match="already exists"):
        run_command("create", "taken", "--type", TYPE)
