"""Store, validate and publish workflow definitions."""

from __future__ import annotations

import functools

from django.db import transaction

from .. import definition as definition_format
from .. import expressions
from ..models import TriggerSubscription, Workflow, WorkflowVersion
from ..steps import registry


def _expression_error(expression: str) -> str | None:
    try:
        expressions.check(expression)
    except expressions.ExpressionError as exc:
        return f"invalid expression {expression!r}: {exc.message}"
    return None


def _template_errors(config) -> list[tuple[str, str]]:
    return [(path, f"invalid {{{{ }}}} expression: {message}")
            for path, message in expressions.check_templates(config)]


def parse_definition(raw) -> definition_format.Definition:
    """Validate against the format, the step registry and the expression language;
    raises InvalidDefinition listing every problem."""
    return definition_format.parse(
        raw,
        kinds=registry.all_kinds(),
        check_expression=_expression_error,
        check_templates=_template_errors,
    )


@functools.lru_cache(maxsize=512)
def _parsed_version(version_id: int) -> definition_format.Definition:
    version = WorkflowVersion.objects.get(pk=version_id)
    return parse_definition(version.definition)


def definition_for(version: WorkflowVersion) -> definition_format.Definition:
    # Versions are immutable, so the parsed definition can be cached by id for the process.
    return _parsed_version(version.pk)


def put_workflow(*, slug: str, raw: dict) -> tuple[Workflow, bool]:
    """Create or replace a workflow's draft. Raises InvalidDefinition and changes nothing."""
    parsed = parse_definition(raw)
    workflow, created = Workflow.objects.update_or_create(
        slug=slug, defaults={"name": parsed.name, "draft": raw}
    )
    return workflow, created


def publish_workflow(*, slug: str, note: str = "", published_by: str = "") -> WorkflowVersion:
    """Freeze the draft into the next numbered version and make it the live one."""
    with transaction.atomic():
        # Lock the workflow so two publishes cannot take the same version number.
        workflow = Workflow.objects.select_for_update().get(slug=slug)
        parsed = parse_definition(workflow.draft)
        last = workflow.versions.order_by("-number").values_list("number", flat=True).first()
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
            for event_type in dict.fromkeys(t.event for t in parsed.triggers)
        )
    return version
