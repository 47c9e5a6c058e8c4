"""Workflows, their numbered versions, and the trigger subscriptions a published version holds."""

from django.db import models


class Workflow(models.Model):
    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    draft = models.JSONField(help_text="the definition being edited; validated on save")
    published_version = models.ForeignKey(
        "WorkflowVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # When set, only members of this group (and admins) see and change the workflow.
    team = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.SET_NULL, related_name="workflows"
    )
    draft_updated_by = models.CharField(max_length=150, blank=True, default="")
    # Bumped by every draft save: a save based on an older revision is a conflict, not a
    # silent overwrite of a colleague's edit.
    draft_revision = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class WorkflowVersion(models.Model):
    """An immutable definition. Runs are pinned to one. Published versions are numbered;
    snapshots (a draft being tried, a shadow replay) have no number and never go live."""

    KINDS = [("published", "published"), ("snapshot", "draft snapshot")]

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=16, choices=KINDS, default="published")
    definition = models.JSONField()
    note = models.CharField(max_length=500, blank=True, default="")
    published_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow", "number"], name="version_number_unique"),
        ]
        ordering = ["workflow", "-number"]

    def __str__(self) -> str:
        return f"{self.workflow.slug} v{self.number or 'draft'}"


class TriggerSubscription(models.Model):
    """Which published version listens to which event type: the bus consumer's lookup table.

    Rewritten on publish, so matching an event is one indexed query.
    """

    event_type = models.CharField(max_length=255, db_index=True)
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="subscriptions")
    version = models.ForeignKey(WorkflowVersion, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["event_type", "workflow"], name="subscription_type_workflow_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} -> {self.workflow_id}"
