"""Signalbox's tables. PostgreSQL is the truth; Redis only carries work between processes."""

from django.db import models
from django.db.models import Q

from workflows.states import RunStatus, StepStatus


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


class Event(models.Model):
    """One accepted CloudEvent: the event store, and the outbox for the bus.

    `published_at` stays NULL until the event is on the bus; the outbox relay appends any
    event left unpublished (Redis was down at commit time). `matched_at` is set once the bus
    consumer has matched it to workflows and waiters; an event published but never matched
    (its entry was lost with a Redis restart) is published again by the relay.
    """

    source = models.CharField(max_length=1024)
    ce_id = models.CharField(max_length=1024)
    type = models.CharField(max_length=255)
    subject = models.CharField(max_length=1024, blank=True, default="")
    specversion = models.CharField(max_length=8, default="1.0")
    time = models.DateTimeField(null=True, blank=True)
    datacontenttype = models.CharField(max_length=255, blank=True, default="")
    dataschema = models.CharField(max_length=1024, blank=True, default="")
    data = models.JSONField(null=True, blank=True)
    # True when `data` holds base64 text of binary data (CloudEvents `data_base64`).
    data_is_base64 = models.BooleanField(default=False)
    extensions = models.JSONField(default=dict, blank=True)
    correlation_id = models.CharField(max_length=255, blank=True, default="")
    causation_id = models.CharField(max_length=255, blank=True, default="")
    # Schema validation: "valid" against `schema_version`, or "unvalidated" (no schema).
    validation = models.CharField(max_length=16, default="unvalidated")
    schema_version = models.PositiveIntegerField(null=True, blank=True)
    # Where the event came from: "http", "webhook", "stream", "connector", "schedule",
    # "manual", "run".
    channel = models.CharField(max_length=16, default="http")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    published_at = models.DateTimeField(null=True, blank=True)
    matched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "ce_id"], name="event_source_id_unique"),
        ]
        indexes = [
            models.Index(fields=["type", "-id"], name="event_type_recent"),
            models.Index(fields=["source", "-id"], name="event_source_recent"),
            models.Index(fields=["correlation_id", "-id"], name="event_correlation_recent"),
            models.Index(
                fields=["received_at"],
                name="event_unpublished",
                condition=Q(published_at__isnull=True),
            ),
            models.Index(
                fields=["published_at"],
                name="event_unmatched",
                condition=Q(matched_at__isnull=True, published_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.source}#{self.ce_id}"


class EventRollup(models.Model):
    """How many events of a type one workflow's runs (or nobody's: `workflow` "") produced in
    one closed minute, so the overview counts a window from a few hundred rows, not from
    every event in it (workflows/services/event_rollups.py). A minute once rolled up is final
    and has a marker row (type ""), even when it had no events."""

    minute = models.DateTimeField()
    type = models.CharField(max_length=255)
    # The owning workflow's slug (event_selectors.hidden_events' rule), "" for everyone's.
    workflow = models.CharField(max_length=100)
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "type", "workflow"], name="eventrollup_minute_type_workflow"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.minute:%H:%M} {self.type} {self.workflow or '-'}: {self.count}"


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
    # W3C traceparent of the span that started the run (tracing on; workflows/tracing.py):
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


class DeadLetter(models.Model):
    """Something that could not be processed, kept with everything needed to act on it.

    Nothing leaves this table without a recorded decision (`resolution`)."""

    KIND_CHOICES = [
        ("step", "step exhausted its attempts"),
        ("bus", "bus entry delivered too often"),
        ("event", "invalid or undeliverable event"),
    ]

    kind = models.CharField(max_length=16, choices=KIND_CHOICES)
    reason = models.TextField()
    payload = models.JSONField(default=dict)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL)
    step_id = models.CharField(max_length=100, blank=True, default="")
    event = models.ForeignKey(Event, null=True, blank=True, on_delete=models.SET_NULL)
    # The payload as it first arrived, when someone edited `payload` (the edit is audited).
    original_payload = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True, default="")
    resolution = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(
                fields=["-id"], name="deadletter_open", condition=Q(resolved_at__isnull=True)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} dead letter {self.pk}"


class EventType(models.Model):
    """A registered event type: the contract producers and workflows share."""

    COMPATIBILITY = [(m, m) for m in ("BACKWARD", "FORWARD", "FULL", "NONE")]

    name = models.CharField(max_length=255, unique=True)
    description = models.TextField(blank=True, default="")
    compatibility = models.CharField(max_length=8, choices=COMPATIBILITY, default="BACKWARD")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class EventSchema(models.Model):
    """One numbered, immutable JSON Schema version of an event type's `data`."""

    event_type = models.ForeignKey(EventType, on_delete=models.CASCADE, related_name="schemas")
    version = models.PositiveIntegerField()
    schema = models.JSONField()
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["event_type", "version"], name="schema_type_version_unique"
            ),
        ]
        ordering = ["event_type", "-version"]

    def __str__(self) -> str:
        return f"{self.event_type_id} v{self.version}"


class Webhook(models.Model):
    """An inbound webhook URL (/hooks/<slug>) that turns any JSON or form body into an event."""

    AUTH_MODES = [
        ("standard", "Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)"),
        ("github", "GitHub-style X-Hub-Signature-256"),
        ("header", "shared secret in a header"),
        ("none", "no authentication"),
    ]

    slug = models.SlugField(max_length=100, unique=True)
    event_type = models.CharField(max_length=255)
    auth_mode = models.CharField(max_length=16, choices=AUTH_MODES, default="standard")
    # The signing secret (or shared header value), encrypted at rest (workflows/crypto.py):
    # HMAC verification needs the plaintext, so it cannot be a one-way hash.
    secret_encrypted = models.TextField()
    header_name = models.CharField(max_length=100, blank=True, default="X-Webhook-Secret")
    # How the body is read (workflows/events/push_formats): `plain`, or a cloud's push format
    # with its options (e.g. the SNS topics accepted, the Pub/Sub token audience).
    push_format = models.CharField(max_length=16, default="plain")
    format_options = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.slug


class Schedule(models.Model):
    """A cron (or `@every 30s`) producer that emits one event per tick."""

    name = models.SlugField(max_length=100, unique=True)
    cron = models.CharField(max_length=100, help_text="5-field cron or @every <duration>")
    timezone = models.CharField(max_length=64, default="UTC")
    event_type = models.CharField(max_length=255)
    data = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    # The last tick emitted; the next one is computed from it. Ticks are events with a
    # deterministic id, so two schedulers emitting the same tick make one event.
    last_tick = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class StreamSource(models.Model):
    """An external Redis stream that other systems XADD events to."""

    name = models.SlugField(max_length=100, unique=True)
    stream = models.CharField(max_length=255, help_text="the Redis stream key")
    redis_url = models.CharField(
        max_length=500, blank=True, default="", help_text="empty: Signalbox's own Redis"
    )
    default_type = models.CharField(max_length=255, blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Connection(models.Model):
    """A named connection to a message broker that Signalbox ingests events from (a
    connector of `kind`, see workflows/events/connectors). The password is never stored
    here: `password_secret` names a Secret. The health fields are written by the process
    that runs the connector, on every change of state."""

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=20)
    url = models.CharField(max_length=500, help_text="the broker's address, without a password")
    username = models.CharField(max_length=255, blank=True, default="")
    password_secret = models.CharField(
        max_length=100, blank=True, default="", help_text="name of the Secret holding the password"
    )
    options = models.JSONField(default=dict, blank=True)
    default_type = models.CharField(max_length=255, blank=True, default="")
    enabled = models.BooleanField(default=True)
    state = models.CharField(max_length=20, default="idle")
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


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
