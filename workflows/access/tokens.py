"""API tokens: shown once, stored as a SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import Group
from django.utils import timezone

from workflows.access import audit
from workflows.access.models import ApiToken

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


@dataclass(frozen=True)
class TokenIdentity:
    """What the ingest fast path needs of a token, kept in a short-lived per-process cache:
    the database confirms the token is unrevoked in the same transaction that stores the
    events (events.intake), so a revocation still takes effect at once."""

    pk: int
    role: str
    team_id: int | None


IDENTITY_CACHE_SECONDS = 30.0
IDENTITY_CACHE_SIZE = 1000
_identities: dict[str, tuple[float, TokenIdentity]] = {}


def cached_identity(plaintext: str) -> TokenIdentity | None:
    """The identity of a token authenticated in the last IDENTITY_CACHE_SECONDS, else None
    (then call `identify`). Pure: no database."""
    hit = _identities.get(_digest(plaintext))
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return None


def identify(plaintext: str) -> TokenIdentity | None:
    """Authenticate against the database and remember the answer for a while."""
    token = authenticate_token(plaintext)
    if token is None:
        return None
    identity = TokenIdentity(token.pk, token.role, token.team_id)
    if len(_identities) >= IDENTITY_CACHE_SIZE:
        _identities.clear()
    _identities[_digest(plaintext)] = (time.monotonic() + IDENTITY_CACHE_SECONDS, identity)
    return identity


class UnknownToken(LookupError):
    pass


def revoke_api_token(*, name: str, actor: str, reason: str = "") -> ApiToken:
    """Revoke the token named `name` at once (its next request gets 401); audited. Revoking
    a revoked token changes nothing. Raises UnknownToken."""
    token = ApiToken.objects.filter(name=name).first()
    if token is None:
        raise UnknownToken(name)
    if token.revoked_at is None and ApiToken.objects.filter(
        pk=token.pk, revoked_at__isnull=True
    ).update(revoked_at=timezone.now()):
        token.refresh_from_db()
        audit.record(
            actor=actor,
            action="api_token.revoke",
            target_type="api_token",
            target_id=token.name,
            reason=reason,
            details={"prefix": token.prefix, "role": token.role},
        )
    return token
