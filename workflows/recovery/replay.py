"""Replay runs: from the failed step, from any step, from the start, with edited input.

A replay is a new run (origin "replay", `replay_of` the original) pinned to the original's
version or the latest published one. Steps that succeeded in the original and that nothing
re-run feeds are *reused*: their StepRun rows are written already succeeded, with the
original's output and port and `reused_from` pointing at the attempt they copy, and are
journaled as `step.reused`. The engine never schedules a step that is already in the run's
state, so reused steps are not executed again; everything else is decided as usual.

Which steps run again (`plan_replay`): the step the replay starts from, every step that did
not finish cleanly in the original (failed, still waiting, never reached), every step that
changed between the original's version and the replay's, and everything downstream of
those. A step the original skipped stays to the engine, which skips it again when what
feeds it is carried over unchanged.

Idempotency keys derive from `Run.idempotency_base` (the original's base, or its id), so a
re-executed side-effecting step sends the same key as the original attempt and a receiver
that deduplicates sees one effect; `renew_idempotency_keys` gives the replay its own keys.

The work is split by concern, and every public name is importable from here as before:
replay_plans (what a replay would do), replay_runs (starting replays and shadow runs: a
draft answered from the original's recorded side effects, see side_effects), replay_batches
(bulk replays processed at a limited rate by a Celery task) and replay_comparison
(step-by-step comparison with the original).
"""

from __future__ import annotations

from workflows.recovery.replay_batches import (
    BulkCheck,
    cancel_batch,
    check_bulk_replay,
    process_batch,
    push_batch,
    resume_stranded_batches,
    run_made_by_batch,
    stale_after,
    start_bulk_replay,
    start_shadow,
)
from workflows.recovery.replay_comparison import (
    MAX_CHANGES,
    Change,
    StepComparison,
    StepSummary,
    compare_runs,
    json_diff,
    shadow_summary,
)
from workflows.recovery.replay_plans import (
    DEFAULT_PER_SECOND,
    FROM_FAILED,
    FROM_START,
    MAX_BATCH,
    MAX_PER_SECOND,
    MAX_SHADOW,
    UNCHANGED,
    VERSION_LATEST,
    VERSION_ORIGINAL,
    RemovedStep,
    ReplayError,
    ReplayPlan,
    StepPlan,
    default_version,
    latest_attempts,
    plan_replay,
    replays_that_can_start,
    resolve_version,
    version_choices,
)
from workflows.recovery.replay_runs import (
    original_input,
    replay_run,
    snapshot_draft,
    start_shadow_run,
)
from workflows.runs.side_effects import EFFECTFUL_CONTROL_KINDS, recorded_result, side_effecting

__all__ = [
    "DEFAULT_PER_SECOND",
    "EFFECTFUL_CONTROL_KINDS",
    "FROM_FAILED",
    "FROM_START",
    "MAX_BATCH",
    "MAX_CHANGES",
    "MAX_PER_SECOND",
    "MAX_SHADOW",
    "UNCHANGED",
    "VERSION_LATEST",
    "VERSION_ORIGINAL",
    "BulkCheck",
    "Change",
    "RemovedStep",
    "ReplayError",
    "ReplayPlan",
    "StepComparison",
    "StepPlan",
    "StepSummary",
    "cancel_batch",
    "check_bulk_replay",
    "compare_runs",
    "default_version",
    "json_diff",
    "latest_attempts",
    "original_input",
    "plan_replay",
    "process_batch",
    "push_batch",
    "recorded_result",
    "replay_run",
    "replays_that_can_start",
    "resolve_version",
    "resume_stranded_batches",
    "run_made_by_batch",
    "shadow_summary",
    "side_effecting",
    "snapshot_draft",
    "stale_after",
    "start_bulk_replay",
    "start_shadow",
    "start_shadow_run",
    "version_choices",
]
