"""Publish a workflow's draft as its next numbered version, with the producers its
triggers need (webhook lookups, schedules) and its trigger subscriptions."""

from __future__ import annotations

from django.db import transaction

from workflows.authoring.destination_checks import destination_problems
from workflows.authoring.preflight import refuse_failing_runs
from workflows.catalog.definition_parsing import parse_definition
from workflows.catalog.models import TriggerSubscription, Workflow, WorkflowVersion
from workflows.core import definition as definition_format
from workflows.events.models import Schedule, Webhook
from workflows.events.schedules import InvalidSchedule
from workflows.events.schedules import parse as parse_schedule


def schedule_event_type(slug: str) -> str:
    return f"signalbox.schedule.{slug}"


def manual_event_type(slug: str) -> str:
    return f"signalbox.manual.{slug}"


def _trigger_event_types(slug: str, parsed: definition_format.Definition) -> list[str]:
    """The event types a version listens to, creating the producers its triggers need.
    Raises InvalidDefinition naming the trigger when one cannot be set up."""
    types: list[str] = []
    problems: list[definition_format.Problem] = []
    schedules: list[tuple[int, definition_format.Trigger]] = []
    for index, trigger in enumerate(parsed.triggers):
        if trigger.event:
            types.append(trigger.event)
        elif trigger.webhook:
            webhook = Webhook.objects.filter(slug=trigger.webhook).first()
            if webhook is None:
                problems.append(
                    definition_format.Problem(
                        f"/triggers/{index}/webhook",
                        f"no webhook {trigger.webhook!r}; create it first (python manage.py "
                        f"webhooks create {trigger.webhook} --type TYPE)",
                    )
                )
            else:
                types.append(webhook.event_type)
        elif trigger.schedule:
            try:
                parse_schedule(trigger.schedule, trigger.timezone or "UTC")
            except InvalidSchedule as exc:
                problems.append(definition_format.Problem(f"/triggers/{index}/schedule", str(exc)))
            schedules.append((index, trigger))
            types.append(schedule_event_type(slug))
        elif trigger.manual:
            types.append(manual_event_type(slug))
    if problems:
        raise definition_format.InvalidDefinition(problems)
    # The workflow's schedules are replaced by the ones of the version being published.
    Schedule.objects.filter(name__startswith=f"wf-{slug}-").delete()
    for index, trigger in schedules:
        Schedule.objects.create(
            name=f"wf-{slug}-{index}"[:100],
            cron=" ".join(trigger.schedule.split()),
            timezone=trigger.timezone or "UTC",
            event_type=schedule_event_type(slug),
            data={"workflow": slug},
        )
    return list(dict.fromkeys(types))


def publish_workflow(*, slug: str, note: str = "", published_by: str = "") -> WorkflowVersion:
    """Freeze the draft into the next numbered version and make it the live one."""
    with transaction.atomic():
        # Lock the workflow so two publishes cannot take the same version number.
        workflow = Workflow.objects.select_for_update().get(slug=slug)
        parsed = parse_definition(workflow.draft)
        event_types = _trigger_event_types(slug, parsed)
        # Events sent to a connection that is not there, or to a target it cannot take,
        # would fail every run: refused now, naming the step.
        problems = destination_problems(workflow.draft)
        if problems:
            raise definition_format.InvalidDefinition(problems)
        last = (
            workflow.versions.filter(number__isnull=False)
            .order_by("-number")
            .values_list("number", flat=True)
            .first()
        )
        version = WorkflowVersion.objects.create(
            workflow=workflow,
            number=(last or 0) + 1,
            definition=workflow.draft,
            note=note,
            published_by=published_by,
        )
        workflow.published_version = version
        workflow.save(update_fields=["published_version", "updated_at"])
        TriggerSubscription.objects.filter(workflow=workflow).delete()
        TriggerSubscription.objects.bulk_create(
            TriggerSubscription(event_type=event_type, workflow=workflow, version=version)
            for event_type in event_types
        )
    return version


def publish_runnable(*, slug: str, note: str = "", published_by: str = "") -> WorkflowVersion:
    """publish_workflow, refused as the editor refuses it (drafts.publish_draft): a draft
    that is not well formed raises InvalidDefinition, and one whose every run would trip
    over something (preflight) raises RunsWouldFail; nothing is published either way."""
    with transaction.atomic():
        # Locked, so the draft checked is the draft published.
        workflow = Workflow.objects.select_for_update().get(slug=slug)
        parse_definition(workflow.draft)
        refuse_failing_runs(workflow.draft)
        return publish_workflow(slug=slug, note=note, published_by=published_by)
