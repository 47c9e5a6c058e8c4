"""Rotating the encryption key: every value encrypted at rest, in whichever context it is
kept (named secrets, webhook secrets), re-encrypted with the newest configured key."""

from __future__ import annotations

from django.db import transaction

from workflows.access import audit
from workflows.access.models import Secret
from workflows.access.secrets import SecretError
from workflows.events.models import Webhook
from workflows.infra import crypto


def rotate_encryption_key(*, actor: str) -> dict[str, int]:
    """Re-encrypt every stored secret and webhook secret with the newest configured key, in
    one transaction. Raises SecretError naming the first value no configured key reads."""
    counts = {"secrets": 0, "webhooks": 0}
    with transaction.atomic():
        # Locked: a value changed meanwhile would be overwritten with its old plaintext.
        for secret in Secret.objects.select_for_update().order_by("pk"):
            secret.value_encrypted = _reencrypt(secret.value_encrypted, f"secret {secret.name}")
            secret.save(update_fields=["value_encrypted"])
            counts["secrets"] += 1
        for hook in Webhook.objects.select_for_update().exclude(secret_encrypted="").order_by("pk"):
            hook.secret_encrypted = _reencrypt(hook.secret_encrypted, f"webhook {hook.slug}")
            hook.save(update_fields=["secret_encrypted"])
            counts["webhooks"] += 1
        audit.record(
            actor=actor,
            action="secrets.rekey",
            target_type="secret",
            target_id="*",
            details=counts,
        )
    return counts


def _reencrypt(token: str, what: str) -> str:
    try:
        return crypto.reencrypt(token)
    except crypto.InvalidToken:
        raise SecretError(
            f"{what} cannot be decrypted with any key in SIGNALBOX_ENCRYPTION_KEY; "
            "keep the old key in the list (after the new one) until the rotation is done"
        ) from None
