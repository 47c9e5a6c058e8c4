"""Workflow definitions as files: export a version or the draft as YAML/JSON, and import
one as a draft (checked like every draft, conflicts included).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from workflows.access import audit
from workflows.authoring.definition_files import dump_definition, load_definition_text
from workflows.authoring.draft_store import (
    MAX_NOTE,
    SLUG,
    DraftRefused,
    definition_at,
    replace_draft,
)
from workflows.authoring.publishing import publish_runnable
from workflows.catalog.definition_parsing import parse_definition
from workflows.catalog.models import Workflow, WorkflowVersion


# --- definitions as files ------------------------------------------------------------------
def export_definition(
    *, workflow: Workflow, yaml_format: bool, version: int | None = None
) -> tuple[str, str]:
    """(filename, text) of the draft, or of a published version when `version` is given."""
    raw = definition_at(workflow, version)
    suffix = f"-v{version}" if version is not None else ""
    extension = "yaml" if yaml_format else "json"
    return f"{workflow.slug}{suffix}.{extension}", dump_definition(raw, yaml_format=yaml_format)


@dataclass(frozen=True)
class ImportResult:
    workflow: Workflow
    created: bool
    version: WorkflowVersion | None


def import_definition(
    *,
    slug: str,
    body: bytes,
    yaml_format: bool,
    by: str,
    publish: bool = False,
    note: str = "",
    base_revision: int | None = None,
    client: str = "",
    team=None,
) -> ImportResult:
    """Replace a workflow's draft with a definition file (creating the workflow if needed,
    in `team`) and optionally publish it, all or nothing.

    Raises UnreadableDefinition (neither JSON nor YAML), InvalidDefinition (every problem,
    with its JSON pointer; RunsWouldFail when only a publish is refused, for problems every
    run would hit), DraftRefused (a bad slug) or DraftConflict (`base_revision` is not the
    stored revision); then nothing has changed."""
    if not SLUG.match(slug or ""):
        raise DraftRefused(f"{slug!r} is not a workflow slug (letters, digits, '-' and '_')")
    raw = load_definition_text(body, yaml_format=yaml_format)
    parse_definition(raw)
    with transaction.atomic():
        workflow, created = replace_draft(
            slug=slug, raw=raw, by=by, base_revision=base_revision, client=client, team=team
        )
        version = None
        if publish:
            # Inside the transaction: a publish that is refused (a webhook that does not
            # exist, a problem every run would hit) takes the new draft back with it.
            version = publish_runnable(
                slug=slug, note=(note or "imported")[:MAX_NOTE], published_by=by
            )
        audit.record(
            actor=by,
            action="workflow.import",
            target_type="workflow",
            target_id=slug,
            reason=note or "",
            details={"created": created, "version": version.number if version else None},
        )
    workflow.refresh_from_db()
    return ImportResult(workflow=workflow, created=created, version=version)
