"""Webhook triggers: /hooks/<slug> turns authentic JSON or form bodies into CloudEvents.

The `standardwebhooks` package (the reference implementation) signs requests as a real
sender would; GitHub-style signatures are computed the way GitHub documents them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from standardwebhooks import Webhook as StandardSigner

from tests.factories import definition, log_step
from tests.waiting import wait_until
from workflows.access.tokens import create_api_token
from workflows.events.models import Event, EventSchema, EventType, Webhook
from workflows.events.webhook_auth import standard_key, verify
from workflows.events.webhooks import InvalidWebhook, create_webhook
from workflows.infra import crypto

TYPE = "com.example.webhook.received"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def standard_headers(
    secret: str, body: bytes, *, msg_id: str | None = None, at: datetime | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(tz=UTC)
    signature = StandardSigner(secret).sign(msg_id=msg_id, timestamp=at, data=body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(client: Client, slug: str, body: bytes, headers: dict[str, str], content_type: str = JSON):
    return client.post(f"/hooks/{slug}", data=body, content_type=content_type, headers=headers)


@pytest.fixture
def standard_hook(db):
    _hook, secret = create_webhook(slug="orders", event_type=TYPE)
    return secret


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    return problem


# --- Standard Webhooks ------------------------------------------------------------------


def test_a_signed_standard_webhook_becomes_an_event_of_the_webhooks_type(client, standard_hook):
    body = json.dumps({"order": 7, "items": ["a", "b"]}).encode()
    headers = standard_headers(standard_hook, body, msg_id="msg_first")

    response = post(client, "orders", body, headers)

    assert response.status_code == 202, response.content
    assert response.json()["duplicate"] is False
    event = Event.objects.get(pk=response.json()["id"])
    assert (event.type, event.source, event.ce_id) == (TYPE, "/hooks/orders", "msg_first")
    assert event.data == {"order": 7, "items": ["a", "b"]}
    assert event.channel == "webhook"
    assert event.datacontenttype == JSON


def test_any_json_value_is_accepted_as_the_event_data(client, standard_hook):
    body = b'[1, "two", null]'

    response = post(client, "orders", body, standard_headers(standard_hook, body))

    assert response.status_code == 202
    assert Event.objects.get(pk=response.json()["id"]).data == [1, "two", None]


def test_a_replayed_webhook_id_is_a_duplicate_and_stores_no_second_event(client, standard_hook):
    body = b'{"order": 1}'
    headers = standard_headers(standard_hook, body, msg_id="msg_once")

    first = post(client, "orders", body, headers)
    replay = post(client, "orders", body, headers)

    assert first.status_code == 202 and replay.status_code == 200
    assert replay.json() == {**first.json(), "duplicate": True}
    assert Event.objects.filter(source="/hooks/orders").count() == 1


def test_a_signature_made_with_another_secret_is_refused(client, standard_hook):
    body = b'{"order": 1}'
    other = "whsec_" + "A" * 44
    response = post(client, "orders", body, standard_headers(other, body))

    problem = assert_problem(response, 401)
    assert "signature" in problem["detail"]
    assert not Event.objects.exists()


def test_a_body_changed_after_signing_is_refused(client, standard_hook):
    headers = standard_headers(standard_hook, b'{"amount": 1}')

    assert_problem(post(client, "orders", b'{"amount": 1000}', headers), 401)


def test_a_webhook_id_changed_after_signing_is_refused(client, standard_hook):
    body = b'{"order": 1}'
    headers = {**standard_headers(standard_hook, body), "webhook-id": "msg_other"}

    assert_problem(post(client, "orders", body, headers), 401)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_request_missing_a_signature_header_is_refused(client, standard_hook, missing):
    body = b'{"order": 1}'
    headers = standard_headers(standard_hook, body)
    del headers[missing]

    problem = assert_problem(post(client, "orders", body, headers), 401)
    assert missing in problem["detail"]


def test_an_unsigned_request_is_refused(client, standard_hook):
    assert_problem(post(client, "orders", b"{}", {}), 401)


def test_a_timestamp_more_than_five_minutes_old_is_refused(client, standard_hook):
    body = b'{"order": 1}'
    stale = datetime.now(tz=UTC) - timedelta(minutes=5, seconds=30)

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body, at=stale)), 401
    )
    assert "old" in problem["detail"]


def test_a_timestamp_more_than_five_minutes_ahead_is_refused(client, standard_hook):
    body = b'{"order": 1}'
    future = datetime.now(tz=UTC) + timedelta(minutes=5, seconds=30)

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body, at=future)), 401
    )
    assert "future" in problem["detail"]


@pytest.mark.parametrize("offset", [-4, 4])
def test_a_clock_skew_within_five_minutes_either_way_is_tolerated(client, standard_hook, offset):
    body = b'{"order": 1}'
    at = datetime.now(tz=UTC) + timedelta(minutes=offset)

    assert (
        post(client, "orders", body, standard_headers(standard_hook, body, at=at)).status_code
        == 202
    )


def test_any_one_of_several_signatures_may_match_as_during_key_rotation(client, standard_hook):
    body = b'{"order": 1}'
    headers = standard_headers(standard_hook, body)
    old_key = StandardSigner("whsec_" + "B" * 44).sign(
        msg_id=headers["webhook-id"], timestamp=datetime.now(tz=UTC), data=body.decode()
    )
    headers["webhook-signature"] = f"v1a,c2lnbmF0dXJl {old_key} {headers['webhook-signature']}"

    assert post(client, "orders", body, headers).status_code == 202


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-signature", "garbage"),
        ("webhook-signature", "v1,!!!not-base64!!!"),
        ("webhook-signature", "v1,a,b"),
        ("webhook-signature", "v1"),
        ("webhook-timestamp", "yesterday"),
        ("webhook-timestamp", "1e9"),
        ("webhook-timestamp", "nan"),
        ("webhook-timestamp", "-1"),
    ],
)
def test_malformed_signature_headers_are_refused_with_401_not_a_crash(
    client, standard_hook, header, value
):
    body = b'{"order": 1}'
    headers = {**standard_headers(standard_hook, body), header: value}

    assert_problem(post(client, "orders", body, headers), 401)


def test_the_signature_is_checked_over_the_exact_bytes_received(client, standard_hook):
    body = '{"name": "Zoë ✓"}'.encode()

    response = post(client, "orders", body, standard_headers(standard_hook, body))

    assert response.status_code == 202
    assert Event.objects.get(pk=response.json()["id"]).data == {"name": "Zoë ✓"}


def test_a_form_body_becomes_a_dict_with_repeated_fields_as_lists(client, standard_hook):
    body = urlencode([("name", "Ada"), ("tag", "a"), ("tag", "b"), ("empty", "")]).encode()

    response = post(client, "orders", body, standard_headers(standard_hook, body), FORM)

    assert response.status_code == 202, response.content
    event = Event.objects.get(pk=response.json()["id"])
    assert event.data == {"name": "Ada", "tag": ["a", "b"], "empty": ""}


def test_a_traceparent_header_is_kept_on_the_event(client, standard_hook):
    body = b"{}"
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {**standard_headers(standard_hook, body), "traceparent": traceparent}

    response = post(client, "orders", body, headers)

    assert Event.objects.get(pk=response.json()["id"]).extensions["traceparent"] == traceparent


# --- Wrong input ------------------------------------------------------------------------


def test_invalid_json_is_refused_with_400(client, standard_hook):
    body = b'{"order": '

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body)), 400
    )
    assert "invalid JSON" in problem["detail"]


def test_a_body_that_is_not_utf8_is_refused_with_400(client, standard_hook):
    body = b'{"name": "\xff"}'
    headers = standard_headers(standard_hook, b"{}")
    # Sign the real bytes by hand: the reference signer only takes text.
    key = standard_key(standard_hook)
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    headers["webhook-signature"] = (
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    )

    problem = assert_problem(post(client, "orders", body, headers), 400)
    assert "UTF-8" in problem["detail"]


def test_a_body_that_is_neither_json_nor_a_form_is_refused_with_415(client, standard_hook):
    body = b"<order/>"

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body), "application/xml"),
        415,
    )
    assert "application/json" in problem["detail"]


def test_an_unauthenticated_request_learns_nothing_about_its_body(client, standard_hook):
    assert_problem(post(client, "orders", b"<order/>", {}, "application/xml"), 401)


def test_a_body_over_the_limit_is_refused_with_413(client, standard_hook, settings):
    settings.SIGNALBOX = {**settings.SIGNALBOX, "MAX_EVENT_BYTES": 1024}
    body = json.dumps({"blob": "x" * 2000}).encode()

    assert_problem(post(client, "orders", body, standard_headers(standard_hook, body)), 413)
    assert not Event.objects.exists()


def test_an_unknown_slug_answers_a_404_problem(client, db):
    problem = assert_problem(post(client, "nobody", b"{}", {}), 404)
    assert "/hooks/nobody" in problem["detail"]


def test_a_disabled_webhook_answers_404(client, standard_hook):
    Webhook.objects.filter(slug="orders").update(enabled=False)
    body = b"{}"

    assert_problem(post(client, "orders", body, standard_headers(standard_hook, body)), 404)


@pytest.mark.parametrize("stored", ["", "not-a-fernet-token"])
def test_a_webhook_whose_secret_is_empty_or_unreadable_fails_closed(client, db, stored):
    Webhook.objects.create(
        slug="broken", event_type=TYPE, auth_mode="github", secret_encrypted=stored
    )
    body = b"{}"
    headers = {"X-Hub-Signature-256": github_signature("", body)}

    assert_problem(post(client, "broken", body, headers), 500)
    assert not Event.objects.exists()


def test_a_get_on_a_webhook_url_answers_a_405_problem(client, standard_hook):
    response = client.get("/hooks/orders")

    assert_problem(response, 405)
    assert response["Allow"] == "POST, OPTIONS"


def test_data_that_breaks_the_types_schema_is_refused_with_400(client, standard_hook):
    event_type = EventType.objects.create(name=TYPE)
    EventSchema.objects.create(
        event_type=event_type, version=1, schema={"type": "object", "required": ["order"]}
    )
    body = b'{"something": "else"}'

    problem = assert_problem(
        post(client, "orders", body, standard_headers(standard_hook, body)), 400
    )
    assert problem["type"].endswith("schema-violation")


# --- GitHub, header and none modes ------------------------------------------------------


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


# --- End to end -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_signed_webhook_call_starts_one_run_of_the_workflow_triggered_by_its_type(api, stack):
    created = api.post("/api/v1/webhooks", json={"slug": "deploys", "event_type": TYPE})
    assert created.status_code == 201, created.text
    assert api.put(
        "/api/v1/workflows/on-deploy", json=definition(log_step("note"), event=TYPE)
    ).status_code in (200, 201)
    assert api.post("/api/v1/workflows/on-deploy/publish").status_code == 201

    body = json.dumps({"service": "web", "version": "1.2.3"}).encode()
    headers = {
        **standard_headers(created.json()["secret"], body, msg_id="msg_deploy_1"),
        "Content-Type": JSON,
    }
    # The sender knows nothing of our API token.
    first = httpx.post(created.json()["url"], content=body, headers=headers, timeout=15)
    assert first.status_code == 202, first.text
    event_id = first.json()["id"]

    def finished():
        runs = api.get("/api/v1/runs", params={"workflow": "on-deploy"}).json()["runs"]
        return [r for r in runs if r["event"] == event_id and r["status"] == "succeeded"]

    wait_until(finished, message="the webhook's run to succeed")

    replay = httpx.post(created.json()["url"], content=body, headers=headers, timeout=15)
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    forged = httpx.post(
        created.json()["url"], content=b'{"service": "db"}', headers=headers, timeout=15
    )
    assert forged.status_code == 401
    assert forged.headers["Content-Type"] == "application/problem+json"
    runs = api.get("/api/v1/runs", params={"workflow": "on-deploy"}).json()["runs"]
    assert len(runs) == 1
    assert Event.objects.filter(source="/hooks/deploys").count() == 1
