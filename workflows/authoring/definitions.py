"""Store, validate and publish workflow definitions: the one place callers import these
from. The work is done beneath: parsing and the parsed-version cache in
`definition_parsing`, publishing in `publishing`, drafts in `drafts` (the run services
import the first directly, so that nothing they need sits above the draft editor)."""

from __future__ import annotations

from workflows.authoring.draft_store import replace_draft
from workflows.authoring.preflight import RunsWouldFail
from workflows.authoring.publishing import (
    manual_event_type,
    publish_runnable,
    publish_workflow,
    schedule_event_type,
)
from workflows.catalog.definition_parsing import PARSED_CACHE_SIZE, definition_for, parse_definition
from workflows.catalog.models import Workflow

__all__ = [
    "PARSED_CACHE_SIZE",
    "RunsWouldFail",
    "definition_for",
    "manual_event_type",
    "parse_definition",
    "publish_runnable",
    "publish_workflow",
    "put_workflow",
    "schedule_event_type",
]


def put_workflow(*, slug: str, raw: dict) -> tuple[Workflow, bool]:
    """Create or replace a workflow's draft. Raises InvalidDefinition and changes nothing."""
    # Through the one writer of drafts, which bumps the draft revision and tells open
    # editors.
    return replace_draft(slug=slug, raw=raw)
