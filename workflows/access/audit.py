"""The audit trail: who replayed, edited, re-drove, discarded or cancelled what, and why.

Entries are written in the same transaction as the change they describe, so an action
without its entry (or an entry without its action) cannot be committed.
"""

from __future__ import annotations

from typing import Any

from workflows.access.models import AuditEntry

# The actions recovery writes; the audit page offers them as filters.
ACTIONS = (
    "run.replay",
    "run.cancel",
    "replay.bulk",
    "replay.bulk_cancel",
    "shadow.start",
    "dead_letter.edit",
    "dead_letter.redrive",
    "dead_letter.discard",
    "events.redrive",
    "api_token.revoke",
    "secret.create",
    "secret.rotate",
    "secret.delete",
    "secrets.rekey",
)


def record(
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: int | str,
    reason: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    return AuditEntry.objects.create(
        actor=actor or "unknown",
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        reason=reason or "",
        details=details or {},
    )
