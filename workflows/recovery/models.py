"""Dead letters and replay batches."""

from django.db import models


class ReplayBatch(models.Model):
    """A bulk replay or re-drive: what was selected, how far it got, the summary."""

    STATUSES = [(s, s) for s in ("pending", "running", "done", "cancelled")]

    kind = models.CharField(max_length=16, default="replay")  # replay | redrive | shadow
    selection = models.JSONField(default=dict)
    options = models.JSONField(default=dict)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=STATUSES, default="pending")
    summary = models.JSONField(default=dict, blank=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    # Renewed while a worker drives the batch; a stale one is resumed by the scheduler.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} batch {self.pk} ({self.done}/{self.total})"
