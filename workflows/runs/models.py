"""Runs, their step attempts, per-item results, the journal and event waiters."""

from django.db import models
from django.db.models import Q

from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core.states import RunStatus, StepStatus
from workflows.events.models import Event


class Run(models.Model):
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="runs")
    version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="runs")
    event = models.ForeignKey(Event, null=True, on_delete=models.SET_NULL, related_name="runs")
    ORIGINS = [(o, o) for o in ("trigger", "child", "replay", "redrive", "shadow", "try")]

    status = models.CharField(
        max_length=16, choices=[(s, s) for s in RunStatus], default=RunStatus.QUEUED
    )
    error = models.TextField(blank=True, default="")
    # Why the run exists: a trigger matched, a parent started it, or someone replayed,
    # re-drove, shadowed or tried it.
    origin = models.CharField(max_length=16, choices=ORIGINS, default="trigger")
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays"
    )
    replay_from_step = models.CharField(max_length=100, blank=True, default="")
    # Edited input of a replay (recorded; the original event is left untouched).
    input_override = models.JSONField(null=True, blank=True)
    # Idempotency keys derive from this run id (a replay keeps its original's, so a receiver
    # that deduplicates sees the same key; "renew" leaves it empty: the run's own id).
    idempotency_base = models.BigIntegerField(null=True, blank=True)
    correlation_id = models.CharField(max_length=255, blank=True, default="")
    # W3C traceparent of the span that started the run (tracing on; workflows/infra/tracing.py):
    # the parent of every attempt's span, in whichever process runs it.
    traceparent = models.CharField(max_length=55, blank=True, default="", db_default="")
    # Runs of an ordered workflow with the same key go one after another.
    partition_key = models.CharField(max_length=255, blank=True, default="")
    # A sub_workflow step's child run points at the attempt waiting for it.
    parent_step = models.ForeignKey(
        "StepRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="child_runs"
    )
    # Bumped on every change; pushed to browsers so they can tell stale hints from new ones.
    seq = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # The bus delivers at least once; this makes matching an event idempotent.
            models.UniqueConstraint(
                fields=["event", "workflow"],
                name="run_event_workflow_unique",
                condition=Q(event__isnull=False, origin="trigger"),
            ),
        ]
        indexes = [
            models.Index(fields=["workflow", "-id"], name="run_workflow_recent"),
            models.Index(fields=["status", "-id"], name="run_status_recent"),
            # A workflow filtered by a status it rarely has must not read all its runs.
            models.Index(fields=["workflow", "status", "-id"], name="run_workflow_status_recent"),
            models.Index(
                fields=["workflow", "id"],
                name="run_queued_by_workflow",
                condition=Q(status="queued"),
            ),
            # "Not replayed yet" (the bulk replay's filter) probes only the replays, a few
            # rows, never a hash of the whole table.
            models.Index(fields=["replay_of"], name="run_replays", condition=Q(origin="replay")),
            # Failed runs that finished in a time range (the bulk replay's filter), without
            # reading every failed run.
            models.Index(
                fields=["finished_at"], name="run_failed_finished", condition=Q(status="failed")
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.workflow_id}"


class StepRun(models.Model):
    """One attempt of one step of one run."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    step_id = models.CharField(max_length=100)
    attempt = models.PositiveIntegerField(default=1)
    kind = models.CharField(max_length=50)
    status = models.CharField(
        max_length=16, choices=[(s, s) for s in StepStatus], default=StepStatus.QUEUED
    )
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    error_code = models.CharField(max_length=50, blank=True, default="")
    retryable = models.BooleanField(default=False)
    # The port a succeeded attempt took ("success", "true", a switch case…; "" for none).
    port = models.CharField(max_length=50, blank=True, default="")
    # A waiting attempt wakes up then: a delay's end, or a wait_for_event's timeout.
    wake_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=100, blank=True, default="")
    # A replay reuses the recorded output of a step that already succeeded instead of
    # running it again; this points at the attempt whose output was reused.
    reused_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    worker = models.CharField(max_length=200, blank=True, default="")
    # When a queued retry becomes due; the scheduler enqueues it then (no Celery ETA).
    not_before = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Renewed by the executing worker while the attempt runs; a stale heartbeat means the
    # worker died, so the attempt is retried long before its timeout.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "step_id", "attempt"], name="steprun_attempt_unique"
            ),
        ]
        indexes = [
            models.Index(
                fields=["not_before"],
                name="steprun_due",
                condition=Q(status="queued"),
            ),
            models.Index(
                fields=["wake_at"],
                name="steprun_wake",
                condition=Q(status="waiting"),
            ),
            # The lease sweep (every scheduler tick) and the metrics scrape read only the
            # attempts in flight: a small set in a table that grows without end.
            models.Index(
                fields=["status", "started_at"],
                name="steprun_in_flight",
                condition=Q(status__in=["queued", "running", "waiting"]),
            ),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.step_id}#{self.attempt} of run {self.run_id}"


class StepItemResult(models.Model):
    """A checkpoint of a `for_each` step: one item's output, kept as soon as the item
    succeeded, so a retried attempt (a failed item, a lost worker) runs only the items
    that have no result yet."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="item_results")
    step_id = models.CharField(max_length=100)
    index = models.PositiveIntegerField()
    output = models.JSONField(null=True, blank=True)
    attempt = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "step_id", "index"], name="stepitemresult_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.step_id}[{self.index}] of run {self.run_id}"


class RunJournal(models.Model):
    """Append-only history of a run: every transition, in order, never updated."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="journal")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=50)
    data = models.JSONField(default=dict)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="journal_run_seq_unique"),
        ]
        ordering = ["run", "seq"]

    def __str__(self) -> str:
        return f"run {self.run_id} #{self.seq} {self.kind}"


class EventWaiter(models.Model):
    """A waiting `wait_for_event` attempt: resumed by the first matching event."""

    step_run = models.OneToOneField(StepRun, on_delete=models.CASCADE, related_name="waiter")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="waiters")
    event_type = models.CharField(max_length=255, db_index=True)
    match = models.TextField(default="true", help_text="CEL over `event` and the run's data")
    # What the match expression may read besides the arriving event (run, steps, vars).
    scope = models.JSONField(default=dict)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"run {self.run_id} waits for {self.event_type}"
