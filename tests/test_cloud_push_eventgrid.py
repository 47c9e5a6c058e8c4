"""Azure Event Grid (CloudEvents schema) on /hooks/<slug>: the validation handshake and its
allowed origin, events keeping their own attributes, batches stored whole or not at all,
and the delivery secret.

The clouds themselves are played by the test (tests/cloud_pushes.py): nothing here talks
to AWS, Azure or Google.
"""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from tests.cloud_pushes import TYPE, post
from workflows.events.models import Event
from workflows.events.webhooks import create_webhook

pytestmark = pytest.mark.django_db


BLOB_CREATED = {
    # The Blob storage example from "CloudEvents v1.0 schema with Azure Event Grid".
    "specversion": "1.0",
    "type": "Microsoft.Storage.BlobCreated",
    "source": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/"
    "providers/Microsoft.Storage/storageAccounts/gridtesting",
    "id": "9aeb0fdf-c01e-0131-0922-9eb54906e209",
    "time": "2019-11-18T15:13:39.4589254Z",
    "subject": "blobServices/default/containers/testcontainer/blobs/new-file.png",
    "dataschema": "#",
    "data": {
        "api": "PutBlockList",
        "clientRequestId": "4c5dd7fb-2c48-4a27-bb30-5361b5de920a",
        "requestId": "9aeb0fdf-c01e-0131-0922-9eb549000000",
        "eTag": "0x8D76C39E4407333",
        "contentType": "image/png",
        "contentLength": 30699,
        "blobType": "BlockBlob",
        "url": "https://gridtesting.blob.core.windows.net/testcontainer/new-file.png",
        "sequencer": "000000000000000000000000000099240000000000c41c18",
        "storageDiagnostics": {"batchId": "681fe319-3006-00a8-0022-9e7cde000000"},
    },
}


@pytest.fixture
def eventgrid_hook():
    _hook, secret = create_webhook(
        slug="eventgrid",
        event_type=TYPE,
        auth_mode="header",
        header_name="x-grid-secret",
        push_format="eventgrid",
    )
    return secret


def test_eventgrid_validation_handshake_allows_its_origin(eventgrid_hook):
    response = Client().options(
        "/hooks/eventgrid", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert response.status_code == 200
    assert response["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert response["WebHook-Allowed-Rate"] == "*"


def test_eventgrid_handshake_from_another_origin_is_refused(eventgrid_hook):
    response = Client().options(
        "/hooks/eventgrid", headers={"WebHook-Request-Origin": "attacker.example"}
    )
    assert response.status_code == 403
    assert "WebHook-Allowed-Origin" not in response
    assert Client().options("/hooks/no-such-hook").status_code == 404


def test_eventgrid_cloudevent_keeps_its_own_attributes(eventgrid_hook):
    response = post(
        Client(),
        "eventgrid",
        BLOB_CREATED,
        content_type="application/cloudevents+json; charset=utf-8",
        **{"x-grid-secret": eventgrid_hook},
    )
    assert response.status_code == 202, response.content
    event = Event.objects.get()
    assert (event.ce_id, event.type) == (BLOB_CREATED["id"], "Microsoft.Storage.BlobCreated")
    assert event.source == BLOB_CREATED["source"]
    assert event.data["contentLength"] == 30699
    assert event.dataschema == ""  # Azure's placeholder "#" names no schema


def test_eventgrid_batch_is_stored_whole_or_not_at_all(eventgrid_hook):
    second = {**BLOB_CREATED, "id": str(uuid.uuid4())}
    broken = {**BLOB_CREATED, "id": str(uuid.uuid4()), "specversion": "0.3"}
    headers = {"x-grid-secret": eventgrid_hook}
    batch = "application/cloudevents-batch+json"
    refused = post(Client(), "eventgrid", [second, broken], content_type=batch, **headers)
    assert refused.status_code == 400
    assert not Event.objects.exists()
    accepted = post(Client(), "eventgrid", [BLOB_CREATED, second], content_type=batch, **headers)
    assert accepted.status_code == 202, accepted.content
    assert [e["ce_id"] for e in accepted.json()["events"]] == [BLOB_CREATED["id"], second["id"]]
    assert Event.objects.count() == 2


def test_eventgrid_delivery_without_its_secret_is_refused(eventgrid_hook):
    response = post(
        Client(), "eventgrid", BLOB_CREATED, content_type="application/cloudevents+json"
    )
    assert response.status_code == 401
