"""Named secrets: stored encrypted, managed by admins (every change audited), handed to
steps by name only through secret-capable fields, masked on the way out as a last guard.

A value is never shown back: a description carries the name, a hint of its first
characters (only when long enough to spare them) and when it last changed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from workflows.access import audit
from workflows.access.models import Secret
from workflows.core.secret_places import encodings
from workflows.infra import crypto

log = logging.getLogger("signalbox.secrets")
MASK = "••••••"
# A name expressions can write as `secrets.<name>`: a CEL identifier.
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
MAX_VALUE_CHARS = 64 * 1024


class SecretError(Exception):
    """A refused change; `status` is what an HTTP answer would say (400, 404, 409), `field`
    the input at fault ("name" or "value")."""

    def __init__(self, message: str, *, status: int = 400, field: str = "name"):
        super().__init__(message)
        self.message, self.status, self.field = message, status, field


def hint(value: str) -> str:
    """The first characters of a value, only when enough remain hidden: 4 of 20 or more,
    2 of 12 or more, none of a shorter one."""
    shown = 4 if len(value) >= 20 else 2 if len(value) >= 12 else 0
    return value[:shown] + "…" if shown else ""


def describe(secret: Secret) -> dict[str, Any]:
    try:
        shown = hint(crypto.decrypt(secret.value_encrypted))
        readable = True
    except crypto.InvalidToken:  # the key changed without a rotation: say so, not a 500
        shown, readable = "", False
    return {
        "name": secret.name,
        "hint": shown,
        "readable": readable,
        "created_at": secret.created_at.isoformat(),
        "updated_at": secret.updated_at.isoformat(),
    }


def list_secrets() -> list[dict[str, Any]]:
    return [describe(s) for s in Secret.objects.order_by("name")]


def _check_value(value: Any) -> str:
    if not isinstance(value, str):
        raise SecretError("the value must be a string", field="value")
    if not value.strip():
        raise SecretError("the value is empty", field="value")
    if len(value) > MAX_VALUE_CHARS:
        raise SecretError(f"the value is longer than {MAX_VALUE_CHARS} characters", field="value")
    if "\x00" in value:
        raise SecretError("the value cannot contain NUL characters", field="value")
    return value


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise SecretError(
            "a secret name is a letter or _ then letters, digits or _ (at most 100), "
            "so that expressions can read it as secrets.<name>"
        )
    return name


def create_secret(*, name: str, value: str, actor: str) -> Secret:
    """A new secret; refuses a name already taken (409)."""
    name, value = check_name(name), _check_value(value)
    with transaction.atomic():
        if Secret.objects.filter(name=name).exists():
            raise SecretError(f"a secret named {name!r} exists; rotate it instead", status=409)
        secret = Secret.objects.create(name=name, value_encrypted=crypto.encrypt(value))
        audit.record(actor=actor, action="secret.create", target_type="secret", target_id=name)
    return secret


def rotate_secret(*, name: str, value: str, actor: str) -> Secret:
    """A new value for an existing secret (404 when there is none)."""
    value = _check_value(value)
    with transaction.atomic():
        # Locked so two rotations cannot interleave their audit entries and values.
        secret = Secret.objects.select_for_update().filter(name=name).first()
        if secret is None:
            raise SecretError(f"no secret named {name!r}", status=404)
        secret.value_encrypted = crypto.encrypt(value)
        secret.save(update_fields=["value_encrypted", "updated_at"])
        audit.record(actor=actor, action="secret.rotate", target_type="secret", target_id=name)
    return secret


def delete_secret(*, name: str, actor: str) -> None:
    with transaction.atomic():
        deleted, _ = Secret.objects.filter(name=name).delete()
        if not deleted:
            raise SecretError(f"no secret named {name!r}", status=404)
        audit.record(actor=actor, action="secret.delete", target_type="secret", target_id=name)


def set_secret(*, name: str, value: str) -> Secret:
    """Create or replace without an audit entry: for tests and fixtures, not for people."""
    secret, _ = Secret.objects.update_or_create(
        name=name, defaults={"value_encrypted": crypto.encrypt(value)}
    )
    return secret


def secret_values(*, names: Iterable[str] | None = None) -> dict[str, str]:
    """Plaintexts by name: of every secret, or only of `names` (decrypting costs time, and
    a step gets only the secrets its config names)."""
    secrets = Secret.objects.all()
    if names is not None:
        names = sorted(set(names))
        if not names:
            return {}
        secrets = secrets.filter(name__in=names)
    values = {}
    for secret in secrets.only("name", "value_encrypted"):
        try:
            values[secret.name] = crypto.decrypt(secret.value_encrypted)
        except crypto.InvalidToken:
            # Left out: a step naming it fails on the missing name, like a deleted secret.
            log.error(
                "secret %s cannot be decrypted with SIGNALBOX_ENCRYPTION_KEY (was the key "
                "replaced without `manage.py secrets rotate-key`?)",
                secret.name,
            )
    return values


def mask(value: Any, secrets: dict[str, str] | None = None) -> Any:
    """`value` with every secret's plaintext (or base64, hex or URL encoding) replaced by a
    mask. The last guard only: secrets reach nothing stored by design (secret_places)."""
    plaintexts = sorted(
        {
            form
            for v in (secrets if secrets is not None else secret_values()).values()
            if len(v) >= 4
            for form in encodings(v)
        },
        key=len,
        reverse=True,
    )
    if not plaintexts:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            for plain in plaintexts:
                item = item.replace(plain, MASK)
            return item
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        return item

    return walk(value)
