"""Named secrets: stored encrypted, handed to expressions by name, masked on the way out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import crypto
from ..models import Secret

MASK = "••••••"


def set_secret(*, name: str, value: str) -> Secret:
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
    return {
        s.name: crypto.decrypt(s.value_encrypted) for s in secrets.only("name", "value_encrypted")
    }


def mask(value: Any, secrets: dict[str, str] | None = None) -> Any:
    """`value` with every secret's plaintext replaced by a mask, wherever it appears."""
    plaintexts = sorted(
        (v for v in (secrets if secrets is not None else secret_values()).values() if len(v) >= 4),
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
            return {k: walk(v) for k, v in item.items()}
        return item

    return walk(value)
