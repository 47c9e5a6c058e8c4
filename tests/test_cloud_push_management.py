"""Creating push-format webhooks over the management API and on the command line."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from tests.cloud_pushes import TOPIC, TYPE
from workflows.access.tokens import create_api_token
from workflows.events.models import Webhook

pytestmark = pytest.mark.django_db


def test_api_creates_a_push_format_webhook_and_shows_its_format(db):
    _token, plaintext = create_api_token(name="cloud", role="admin")
    client = Client(headers={"Authorization": f"Bearer {plaintext}"})
    created = client.post(
        "/api/v1/webhooks",
        {
            "slug": "orders-sns",
            "event_type": TYPE,
            "auth_mode": "none",
            "push_format": "sns",
            "format_options": {"topic_arns": [TOPIC]},
        },
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["push_format"] == "sns"
    assert created.json()["format_options"] == {"topic_arns": [TOPIC]}
    assert Webhook.objects.get(slug="orders-sns").push_format == "sns"
    refused = client.post(
        "/api/v1/webhooks",
        {"slug": "x", "event_type": TYPE, "push_format": "kinesis"},
        content_type="application/json",
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "push_format"


def test_cli_creates_a_push_format_webhook_and_refuses_bad_options(db):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "webhooks",
        "create",
        "grid",
        "--type",
        TYPE,
        "--auth",
        "header",
        "--format",
        "eventgrid",
        "--options",
        '{"allowed_origins": ["eventgrid.azure.net"]}',
        stdout=out,
        stderr=err,
    )
    assert "url:    /hooks/grid" in out.getvalue()
    assert "(eventgrid, header)" in err.getvalue()
    hook = Webhook.objects.get(slug="grid")
    assert hook.format_options == {"allowed_origins": ["eventgrid.azure.net"]}
    for options, message in (
        ("{not json", "--options: not JSON"),
        ('{"topic_arns": []}', "format_options: topic_arns"),
    ):
        with pytest.raises(CommandError, match=message):
            call_command(
                "webhooks",
                "create",
                "sns2",
                "--type",
                TYPE,
                "--auth",
                "none",
                "--format",
                "sns",
                "--options",
                options,
                stdout=io.StringIO(),
                stderr=io.StringIO(),
            )
