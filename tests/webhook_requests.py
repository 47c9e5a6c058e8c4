"""Requests to /hooks/<slug> as senders make them: Standard Webhooks signed with the
reference library (`standardwebhooks`), GitHub-style signatures computed as GitHub
documents them; and the problem answers checked.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime

from django.test import Client
from standardwebhooks import Webhook as StandardSigner

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


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    return problem
