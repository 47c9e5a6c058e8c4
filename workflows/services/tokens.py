"""API tokens: shown once, stored as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import Group
from django.utils import timezone

from ..models import ApiToken

TOKEN_PREFIX = "sbx_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_token(
    *, name: str, role: str = "editor", team: Group | None = None
) -> tuple[ApiToken, str]:
    """Return the stored token row and the plaintext token (never stored). A token of a
    `team` sees that team's workflows and those of no team; without one, every workflow."""
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        name=name, prefix=plaintext[:10], token_hash=_digest(plaintext), role=role, team=team
    )
    return token, plaintext


def authenticate_token(plaintext: str) -> ApiToken | None:
    # Lookup by digest: the database index does the comparison, on a value an attacker
    # cannot choose byte by byte, so there is no timing oracle on the secret.
    token = ApiToken.objects.filter(token_hash=_digest(plaintext), revoked_at__isnull=True).first()
    now = timezone.now()
    # Record use at most once a minute: a write (and its commit) on every request would
    # cost more than the rest of the authentication.
    if token is not None and (
        token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION
    ):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
