"""What a replay of a run would do, before doing it: which steps are reused, which run
again and why (`plan_replay`), which versions it may be pinned to, and the warnings a
person sees first. Read by the pages and the API before they start anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from workflows.catalog.definition_parsing import definition_for
from workflows.catalog.models import Workflow, WorkflowVersion
from workflows.core.definition import Definition
from workflows.core.states import TERMINAL_RUN, RunStatus, StepStatus
from workflows.runs.item_checkpoints import StepItemCheckpoints, inherited_runs
from workflows.runs.models import Run, StepRun
from workflows.runs.side_effects import side_effecting

FROM_FAILED = "failed"
FROM_START = "start"
VERSION_ORIGINAL = "original"
VERSION_LATEST = "latest"
DEFAULT_PER_SECOND = 5.0
MAX_PER_SECOND = 50.0
MAX_BATCH = 1000
MAX_SHADOW = 100
UNCHANGED: Any = object()  # "no edited input": the replay sees what the original saw


class ReplayError(Exception):
    """A replay that cannot be done, with the HTTP status the API answers."""

    def __init__(self, message: str, *, status: int = 409, kind: str = "cannot-replay"):
        super().__init__(message)
        self.status = status
        self.kind = kind


# --- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepPlan:
    step_id: str
    kind: str
    action: str  # "reuse" | "run" | "skip"
    why: str
    side_effects: bool
    original_status: str | None
    reused_from: int | None = None  # the StepRun whose output is reused
    original_key: str = ""  # the idempotency key of the original's attempt

    def as_json(self, *, renew: bool) -> dict[str, Any]:
        return {
            "step": self.step_id,
            "kind": self.kind,
            "action": self.action,
            "why": self.why,
            "side_effects": self.side_effects,
            "original_status": self.original_status,
            "reused_from": self.reused_from,
            "idempotency_key": ("renewed" if renew else "reused") if self.action == "run" else None,
            "original_idempotency_key": self.original_key or None,
        }


@dataclass(frozen=True)
class RemovedStep:
    """A step of the original's version that the replay's version no longer has."""

    step_id: str
    kind: str
    original_status: str | None

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step_id, "kind": self.kind, "original_status": self.original_status}


@dataclass(frozen=True)
class ReplayPlan:
    original: Run
    version: WorkflowVersion
    version_choice: str
    from_step: str
    renew_idempotency_keys: bool
    input_override: Any  # what the replay's steps see as the event's data (None: unchanged)
    input_edited: bool
    steps: list[StepPlan]
    warnings: list[str] = field(default_factory=list)
    removed: list[RemovedStep] = field(default_factory=list)

    @property
    def reused(self) -> list[StepPlan]:
        return [s for s in self.steps if s.action == "reuse"]

    @property
    def rerun(self) -> list[StepPlan]:
        return [s for s in self.steps if s.action == "run"]

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.original.pk,
            "workflow": self.original.workflow.slug,
            "original_version": self.original.version.number,
            "version": self.version.number,
            "version_choice": self.version_choice,
            "from_step": self.from_step,
            "renew_idempotency_keys": self.renew_idempotency_keys,
            "input_edited": self.input_edited,
            "steps": [s.as_json(renew=self.renew_idempotency_keys) for s in self.steps],
            "reused": [s.step_id for s in self.reused],
            "rerun": [s.step_id for s in self.rerun],
            "removed": [s.as_json() for s in self.removed],
            "warnings": self.warnings,
        }


def latest_attempts(run: Run) -> dict[str, StepRun]:
    latest: dict[str, StepRun] = {}
    # all(), sorted here: steps prefetched for many runs at once (check_bulk_replay) are
    # used as they are, with no query per run.
    for step_run in sorted(run.steps.all(), key=lambda s: (s.attempt, s.pk)):
        latest[step_run.step_id] = step_run
    return latest


def _topological(definition: Definition) -> list[str]:
    """Step ids, every step after all the steps that feed it (definition order otherwise)."""
    order: list[str] = []
    placed: set[str] = set()
    remaining = list(definition.steps)
    while remaining:
        ready = [s for s in remaining if all(e.source in placed for e in definition.incoming(s))]
        if not ready:  # a cycle cannot be published; keep going rather than loop forever
            ready = remaining[:1]
        for step_id in ready:
            order.append(step_id)
            placed.add(step_id)
            remaining.remove(step_id)
    return order


def _downstream_closure(definition: Definition, roots: Iterable[str]) -> dict[str, str]:
    """Every step reachable from `roots`, mapped to the root that reaches it first."""
    reached: dict[str, str] = {}
    frontier = [(r, r) for r in roots if r in definition.steps]
    while frontier:
        step_id, root = frontier.pop(0)
        if step_id in reached:
            continue
        reached[step_id] = root
        frontier.extend((target, root) for target in definition.downstream(step_id))
    return reached


def _edges_into(definition: Definition, step_id: str) -> set[tuple[str, str]]:
    return {(e.source, e.port) for e in definition.incoming(step_id)}


def resolve_version(run: Run, choice: str) -> WorkflowVersion:
    if choice in ("", VERSION_ORIGINAL):
        return run.version
    if choice == VERSION_LATEST:
        workflow = (
            run.workflow  # loaded with its published version (check_bulk_replay)
            if Run.workflow.is_cached(run) and Workflow.published_version.is_cached(run.workflow)
            else Workflow.objects.select_related("published_version").get(pk=run.workflow_id)
        )
        if workflow.published_version is None:
            raise ReplayError(f"workflow {workflow.slug} has no published version")
        return workflow.published_version
    raise ReplayError(
        f"version must be {VERSION_ORIGINAL!r} or {VERSION_LATEST!r}, not {choice!r}",
        status=400,
        kind="invalid-body",
    )


def plan_replay(
    *,
    run: Run,
    from_step: str | None = FROM_FAILED,
    version: str = VERSION_ORIGINAL,
    input: Any = UNCHANGED,
    renew_idempotency_keys: bool = False,
    attempts: dict[str, StepRun] | None = None,
) -> ReplayPlan:
    """What a replay of `run` would do. Raises ReplayError when it cannot be done.
    `attempts`: the run's latest attempt of each step when the caller has them already
    (latest_attempts; check_bulk_replay plans runs that ended alike with one run's)."""
    from_step = from_step or FROM_FAILED
    if run.origin == "shadow":
        raise ReplayError(
            f"run {run.pk} is a shadow run; replay its original, run {run.replay_of_id}, instead"
        )
    if run.status not in TERMINAL_RUN:
        raise ReplayError(
            f"run {run.pk} is still {run.status}; cancel it or wait for it to "
            "finish before replaying it"
        )
    target_version = resolve_version(run, version)
    target = definition_for(target_version)
    original_definition = definition_for(run.version)
    latest = latest_attempts(run) if attempts is None else attempts
    label = f"v{target_version.number}" if target_version.number else "the draft"

    roots: dict[str, str] = {}
    if from_step == FROM_FAILED:
        if run.status != RunStatus.FAILED:
            raise ReplayError(
                f"run {run.pk} did not fail (it {run.status}); replay it from a "
                "step or from the start"
            )
    elif from_step == FROM_START:
        roots = dict.fromkeys(target.steps, "the replay starts from the original event")
    elif from_step in target.steps:
        roots[from_step] = "the replay starts here"
    else:
        raise ReplayError(
            f"no step {from_step!r} in {label} of {run.workflow.slug}; steps: "
            + ", ".join(target.steps),
            status=400,
            kind="invalid-body",
        )
    dropped = [s for s in original_definition.steps if s not in target.steps]
    for step_id, step in target.steps.items():
        before = latest.get(step_id)
        if step_id in roots:
            continue
        if step_id not in original_definition.steps:
            roots[step_id] = f"new in {label}"
        elif replace(step, after=()) != replace(original_definition.steps[step_id], after=()):
            roots[step_id] = f"changed in {label}"
        elif _edges_into(target, step_id) != _edges_into(original_definition, step_id):
            gone = sorted({e.source for e in original_definition.incoming(step_id)} & set(dropped))
            roots[step_id] = (
                f"its inputs changed in {label}: {', '.join(gone)} "
                f"{'is' if len(gone) == 1 else 'are'} no longer there"
                if gone
                else f"its inputs changed in {label}"
            )
        elif before is None:
            roots[step_id] = "not reached in the original"
        elif before.status == StepStatus.FAILED:
            roots[step_id] = "failed in the original"
        elif before.status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            roots[step_id] = f"{before.status} when the original ended"

    order = _topological(target)
    while True:
        rerun = _downstream_closure(target, roots)
        carried: dict[str, StepRun] = {}
        more: dict[str, str] = {}
        for step_id in order:
            before = latest.get(step_id)
            if step_id in rerun or before is None:
                continue
            if before.status == StepStatus.SUCCEEDED:
                carried[step_id] = before
                continue
            # Skipped in the original: the engine skips it again only when it was a dead
            # path (no live edge from what is carried over); a step skipped because the run
            # ended first will run.
            incoming = target.incoming(step_id)
            dead = incoming and all(
                e.source in carried
                and (
                    carried[e.source].status != StepStatus.SUCCEEDED
                    or carried[e.source].port != e.port
                )
                for e in incoming
            )
            if dead:
                carried[step_id] = before
            else:
                more[step_id] = "skipped in the original because the run ended first"
        if not more:
            break
        roots.update(more)

    steps: list[StepPlan] = []
    for step_id in order:
        step = target.steps[step_id]
        before = latest.get(step_id)
        common = {
            "step_id": step_id,
            "kind": step.kind,
            "side_effects": side_effecting(step),
            "original_status": before.status if before else None,
            "original_key": before.idempotency_key if before else "",
        }
        if step_id in rerun:
            root = rerun[step_id]
            why = roots.get(step_id, f"downstream of {root}")
            steps.append(StepPlan(action="run", why=why, **common))
        elif before is not None and before.status == StepStatus.SUCCEEDED:
            steps.append(
                StepPlan(
                    action="reuse", why="succeeded in the original", reused_from=before.pk, **common
                )
            )
        else:
            steps.append(
                StepPlan(
                    action="skip",
                    why="skipped in the original (a path not taken); the engine decides again",
                    **common,
                )
            )

    edited = input is not UNCHANGED and input is not None
    override = input if edited else run.input_override
    plan_from = from_step
    removed = [
        RemovedStep(
            step_id=step_id,
            kind=original_definition.steps[step_id].kind,
            original_status=latest[step_id].status if step_id in latest else None,
        )
        for step_id in dropped
    ]
    if from_step == FROM_FAILED:
        # The failed step may be gone from the target version (the usual fix removes or
        # renames it): the run is then mapped onto the new version, which the plan shows.
        failed = [s for s, r in latest.items() if r.status == StepStatus.FAILED]
        if not failed:
            raise ReplayError(
                f"run {run.pk} has no failed step; replay it from a step or from the start"
            )
    plan = ReplayPlan(
        original=run,
        version=target_version,
        version_choice=version or VERSION_ORIGINAL,
        from_step=plan_from,
        renew_idempotency_keys=renew_idempotency_keys,
        input_override=override,
        input_edited=edited,
        steps=steps,
        removed=removed,
    )
    plan.warnings.extend(_warnings(plan))
    return plan


def version_choices(run: Run) -> list[dict[str, Any]]:
    """The versions a replay of `run` may run, offered side by side: the latest published
    one first when it is newer than the original's (a replay right after a fix wants it)."""
    original = {"value": VERSION_ORIGINAL, "number": run.version.number, "label": "original"}
    published = run.workflow.published_version
    if published is None or published.pk == run.version_id:
        return [original]
    latest = {"value": VERSION_LATEST, "number": published.number, "label": "latest published"}
    newer = (published.number or 0) > (run.version.number or 0)
    return [latest, original] if newer else [original, latest]


def default_version(run: Run) -> str:
    return version_choices(run)[0]["value"]


def replays_that_can_start(run: Run) -> list[dict[str, Any]]:
    """The (start, version) pairs a replay of `run` can be made with, for a page that has
    to say what can be done instead of what was asked."""
    found = []
    starts = [FROM_FAILED, FROM_START] if run.status == RunStatus.FAILED else [FROM_START]
    for choice in version_choices(run):
        for start in starts:
            try:
                plan_replay(run=run, from_step=start, version=choice["value"])
            except ReplayError as exc:
                if exc.status == 404:
                    raise
                continue
            found.append({"from_step": start, "version": choice["value"], **_named(choice)})
    return found


def _named(choice: dict[str, Any]) -> dict[str, Any]:
    return {"number": choice["number"], "version_label": choice["label"]}


def _warnings(plan: ReplayPlan) -> list[str]:
    found = []
    if plan.version.pk != plan.original.version_id:
        found.append(
            f"the replay runs v{plan.version.number} of {plan.original.workflow.slug}; "
            f"the original ran v{plan.original.version.number}"
        )
    for gone in plan.removed:
        if gone.original_status == StepStatus.FAILED:
            found.append(
                f"step {gone.step_id}, which failed in the original, is not in "
                f"v{plan.version.number}: the run is mapped onto v{plan.version.number}, "
                "reusing what succeeded unchanged and running everything after the first "
                "changed or missing step"
            )
    for step in plan.rerun:
        if not step.side_effects:
            continue
        if plan.renew_idempotency_keys:
            found.append(
                f"step {step.step_id} ({step.kind}) has side effects and runs again "
                "with a NEW idempotency key: receivers will treat it as a new request"
            )
        else:
            found.append(
                f"step {step.step_id} ({step.kind}) has side effects and runs again "
                "with the SAME idempotency key as the original, so a receiver that "
                "deduplicates sees a repeat"
            )
    found.extend(_kept_items(plan))
    if plan.input_edited and plan.reused:
        found.append(
            "the input is edited, but reused steps keep the outputs they computed "
            "from the original input ("
            + ", ".join(s.step_id for s in plan.reused)
            + "); replay from the start to compute them again"
        )
    return found


def _kept_items(plan: ReplayPlan) -> list[str]:
    """A for_each that runs again with the original's keys and input calls only the items the
    original never finished (workflows/runs/item_checkpoints.py): say how many it keeps."""
    if plan.renew_idempotency_keys or plan.input_override is not None:
        return []
    before, after = definition_for(plan.original.version), definition_for(plan.version)
    notes = []
    for step in plan.rerun:
        if step.kind != "for_each" or before.steps.get(step.step_id) != after.steps[step.step_id]:
            continue
        kept = StepItemCheckpoints(
            run_id=plan.original.pk,
            step_id=step.step_id,
            attempt=0,
            secrets={},
            inherited=inherited_runs(plan.original, step.step_id),
        ).done()
        if kept:
            notes.append(
                f"step {step.step_id} (for_each) keeps the {len(kept)} item(s) the original "
                "finished; only the others are called again"
            )
    return notes
