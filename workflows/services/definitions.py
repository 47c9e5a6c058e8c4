"""Store, validate and publish workflow definitions."""

from __future__ import annotations

import threading
from collections import OrderedDict

from django.db import transaction

from .. import definition as definition_format
from .. import expressions
from ..models import Schedule, TriggerSubscription, Webhook, Workflow, WorkflowVersion
from ..steps import registry


def _expression_error(expression: str) -> str | None:
    try:
        expressions.check(expression)
    except expressions.ExpressionError as exc:
        return f"invalid expression {expression!r}: {exc.message}"
    return None


def _template_errors(config) -> list[tuple[str, str]]:
    return [
        (path, f"invalid {{{{ }}}} expression: {message}")
        for path, message in expressions.check_templates(config)
    ]


def parse_definition(raw, *, stored: bool = False) -> definition_format.Definition:
    """Validate against the format, the step registry and the expression language;
    raises InvalidDefinition listing every problem. `stored`: a version already saved,
    loaded to run, which may predate the rule that secrets go only into secret-capable
    fields (its step then fails before rendering one, see execution.render_config)."""
    return definition_format.parse(
        raw,
        kinds=registry.all_kinds(),
        check_expression=_expression_error,
        check_templates=_template_errors,
        check_secrets=not stored,
    )


# Versions are immutable, so a parsed definition is kept by version id for the process:
# matching an event parses each listening version once, not once per event. Sized for the
# versions one process works with at a time (the live ones of busy workflows); the least
# recently used goes first.
PARSED_CACHE_SIZE = 4096
_parsed: OrderedDict[int, definition_format.Definition] = OrderedDict()
_parsed_lock = threading.Lock()


def definition_for(version: WorkflowVersion) -> definition_format.Definition:
    if version.pk is None:  # not saved: nothing to key a cache entry by
        return parse_definition(version.definition, stored=True)
    with _parsed_lock:
        found = _parsed.get(version.pk)
        if found is not None:
            _parsed.move_to_end(version.pk)
            return found
    # A version loaded with its definition (select_related) is parsed as it is; one loaded
    # without it (only()/defer()) is read once.
    raw = (
        version.definition
        if "definition" in version.__dict__
        else WorkflowVersion.objects.values_list("definition", flat=True).get(pk=version.pk)
    )
    parsed = parse_definition(raw, stored=True)
    with _parsed_lock:
        _parsed[version.pk] = parsed
        while len(_parsed) > PARSED_CACHE_SIZE:
            _parsed.popitem(last=False)
    return parsed


def put_workflow(*, slug: str, raw: dict) -> tuple[Workflow, bool]:
    """Create or replace a workflow's draft. Raises InvalidDefinition and changes nothing."""
    # Through the one writer of drafts, which bumps the draft revision and tells open
    # editors (imported here: drafts builds on this module).
    from .drafts import replace_draft

    return replace_draft(slug=slug, raw=raw)


def schedule_event_type(slug: str) -> str:
    return f"signalbox.schedule.{slug}"


def manual_event_type(slug: str) -> str:
    return f"signalbox.manual.{slug}"


def _trigger_event_types(slug: str, parsed: definition_format.Definition) -> list[str]:
    """The event types a version listens to, creating the producers its triggers need.
    Raises InvalidDefinition naming the trigger when one cannot be set up."""
    from ..events.schedules import InvalidSchedule
    from ..events.schedules import parse as parse_schedule

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
