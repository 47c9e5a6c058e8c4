"""Fetching what a cloud push format needs (an SNS certificate, Google's token keys, an SNS
subscription URL) through the outbound guard, small and bounded."""

from __future__ import annotations

import httpx
from django.conf import settings

from workflows.events.push_formats import FetchFailed
from workflows.infra.outbound import OutboundRefused, guarded_client

TIMEOUT_SECONDS = 5.0
MAX_BYTES = 256 * 1024


def fetch(url: str) -> bytes:
    """GET `url` (the caller checked it names an allowed host); raises FetchFailed."""
    try:
        with (
            guarded_client(settings.SIGNALBOX_OUTBOUND_ALLOW, timeout=TIMEOUT_SECONDS) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise FetchFailed(f"GET {url} answered {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise FetchFailed(f"GET {url} answered more than {MAX_BYTES} bytes")
            return body
    except OutboundRefused as exc:
        raise FetchFailed(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise FetchFailed(f"GET {url} failed: {type(exc).__name__}") from exc
