"""The event store and what feeds it: events, the schema registry, webhooks, schedules,
stream sources, broker connections, and dead letters (what could not be delivered)."""

from django.db import models
from django.db.models import Q


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
    # The signing secret (or shared header value), encrypted at rest (workflows/infra/crypto.py):
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
    run = models.ForeignKey("workflows.Run", null=True, blank=True, on_delete=models.SET_NULL)
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
