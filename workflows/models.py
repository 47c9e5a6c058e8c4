"""Django finds an app's models in its `models` module: Signalbox's models live with
their context (workflows/<context>/models.py) and are gathered here for it. Code imports
them from their context, never from here."""

from workflows.access.models import ApiToken, AuditEntry, Secret
from workflows.catalog.models import TriggerSubscription, Workflow, WorkflowVersion
from workflows.events.models import (
    Connection,
    DeadLetter,
    Event,
    EventSchema,
    EventType,
    Schedule,
    StreamSource,
    Webhook,
)
from workflows.queries.models import EventRollup
from workflows.recovery.models import ReplayBatch
from workflows.runs.models import EventWaiter, Run, RunJournal, StepItemResult, StepRun

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Connection",
    "DeadLetter",
    "Event",
    "EventRollup",
    "EventSchema",
    "EventType",
    "EventWaiter",
    "ReplayBatch",
    "Run",
    "RunJournal",
    "Schedule",
    "Secret",
    "StepItemResult",
    "StepRun",
    "StreamSource",
    "TriggerSubscription",
    "Webhook",
    "Workflow",
    "WorkflowVersion",
]
