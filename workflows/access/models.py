"""API tokens, secrets and the audit trail."""

from django.db import models


class ApiToken(models.Model):
    """A bearer token for the API. Only its SHA-256 is kept; the token is shown once."""

    ROLE_CHOICES = [(r, r) for r in ("viewer", "editor", "operator", "admin")]

    name = models.CharField(max_length=100, unique=True)
    prefix = models.CharField(max_length=12, help_text="first characters, to recognise a token")
    token_hash = models.CharField(max_length=64, unique=True)
    role = models.CharField(max_length=16, choices=ROLE_CHOICES, default="editor")
    # A team's token sees that team's workflows and those of no team, like a team member in
    # the dashboard; a token without a team sees every workflow. Deleting the team deletes
    # its tokens: they must never fall back to seeing everything.
    team = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class Secret(models.Model):
    """A named secret that expressions read as `secrets.<name>`; encrypted at rest and
    masked wherever run data is shown."""

    name = models.SlugField(max_length=100, unique=True)
    value_encrypted = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


class AuditEntry(models.Model):
    """Who did what, when and why: replays, edits, re-drives, discards, cancels, publishes."""

    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=50, db_index=True)
    target_type = models.CharField(max_length=50)
    target_id = models.CharField(max_length=100)
    reason = models.TextField(blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target")]

    def __str__(self) -> str:
        return f"{self.actor} {self.action} {self.target_type}:{self.target_id}"
