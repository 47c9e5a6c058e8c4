"""Editing workflows: drafts that may be invalid, versions and their diffs, trying a draft,
and definitions as files.

The visual editor saves what is on the canvas as the workflow's draft at every edit, valid or
not, and shows the problems on the nodes they concern. Only publishing needs a valid draft:
it freezes the draft into an immutable numbered version (`definitions.publish_workflow`).
Trying a draft freezes it into an unnumbered *snapshot* version and starts a run of it
directly, not through the bus, so nothing else hears about the sample event.

Two people may edit the same draft. Every write of a draft goes through `_write_draft`,
which bumps `Workflow.draft_revision`; a write that names the revision it was based on
(`base_revision`) is refused with DraftConflict when someone else saved since, instead of
silently replacing their edit. `force=True` overwrites anyway and is audited. Open editors
hear of every new revision over their socket (`notify.draft_changed`).

The work is split by concern, every public name importable from here as before: draft_store
(access, drafts, versions), draft_diffs, draft_trials (trying a draft), draft_files.
"""

from __future__ import annotations

from workflows.authoring.definition_files import UnreadableDefinition
from workflows.authoring.draft_diffs import (
    STEP_FIELDS,
    WORKFLOW_FIELDS,
    describe_trigger,
    diff_definitions,
)
from workflows.authoring.draft_files import ImportResult, export_definition, import_definition
from workflows.authoring.draft_store import (
    MAX_NOTE,
    RECENT_SAMPLES,
    SLUG,
    TRY_CHANNEL,
    DraftConflict,
    DraftRefused,
    NodeProblems,
    check_draft,
    create_workflow,
    definition_at,
    expect_revision,
    may_edit,
    may_view,
    node_problems,
    ports_of,
    publish_draft,
    published_versions,
    replace_draft,
    restore_version,
    save_draft,
)
from workflows.authoring.draft_trials import recent_samples, trigger_event_types, try_draft
from workflows.core.definition import InvalidDefinition

__all__ = [
    "MAX_NOTE",
    "RECENT_SAMPLES",
    "SLUG",
    "STEP_FIELDS",
    "TRY_CHANNEL",
    "WORKFLOW_FIELDS",
    "DraftConflict",
    "DraftRefused",
    "ImportResult",
    "InvalidDefinition",
    "NodeProblems",
    "UnreadableDefinition",
    "check_draft",
    "create_workflow",
    "definition_at",
    "describe_trigger",
    "diff_definitions",
    "expect_revision",
    "export_definition",
    "import_definition",
    "may_edit",
    "may_view",
    "node_problems",
    "ports_of",
    "publish_draft",
    "published_versions",
    "recent_samples",
    "replace_draft",
    "restore_version",
    "save_draft",
    "trigger_event_types",
    "try_draft",
]
