"""Read queries shared by the API, the dashboard and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Prefetch, Q, QuerySet

from workflows.catalog.models import Workflow
from workflows.runs.models import Run, StepRun

PAGE_SIZE = 50
# A shadow run tries a draft on a recorded event: a finding of its batch, not work the
# workflow did. Run lists and figures leave shadow runs out unless asked for by origin;
# the shadow batch's page lists its own.
SHADOW = "shadow"
# A try runs a snapshot of the draft from the editor: the editor's own runs list shows it;
# run lists leave it out unless asked for (by origin, or the run list's "tries" filter),
# and bulk replay never selects it.
TRY = "try"
UNLISTED = (SHADOW, TRY)
ORIGINS = tuple(origin for origin, _label in Run.ORIGINS)


def runs(
    *,
    workflow_slug: str | None = None,
    status: str | None = None,
    origin: str | None = None,
    before_id: int | None = None,
    limit: int = PAGE_SIZE,
    hidden: frozenset[int] = frozenset(),
) -> list[Run]:
    """Newest first, keyset-paginated by id (stable and index-backed at any depth).
    Every origin but shadow and try unless `origin` names one. Runs of the workflows in `hidden`
    (dashboard_selectors.hidden_workflow_ids / hidden_for_team) are left out."""
    # The page's steps come in one query (run_as_json reads them), not one per run.
    qs: QuerySet[Run] = (
        Run.objects.select_related("workflow", "version", "parent_step")
        .prefetch_related(Prefetch("steps", queryset=StepRun.objects.order_by("id")))
        .order_by("-id")
    )
    if hidden:
        qs = qs.exclude(workflow_id__in=sorted(hidden))
    if workflow_slug:
        # By id, not through a join on the slug: the planner then reads the
        # (workflow, -id) index from the cursor down instead of every run of the workflow.
        found = Workflow.objects.filter(slug=workflow_slug).values_list("id", flat=True).first()
        qs = qs.filter(workflow_id=found if found is not None else -1)
    if status:
        qs = qs.filter(status=status)
    qs = qs.filter(origin=origin) if origin else qs.exclude(origin__in=UNLISTED)
    if before_id:
        qs = qs.filter(id__lt=before_id)
    return list(qs[:limit])


def run_detail(run_id: int) -> Run | None:
    return (
        Run.objects.select_related("workflow", "version", "event", "parent_step")
        .filter(pk=run_id)
        .first()
    )


def _attempts(run: Run) -> list[StepRun]:
    """The run's attempts in id order: the prefetched ones (a page of runs) or one query."""
    prefetched = getattr(run, "_prefetched_objects_cache", {}).get("steps")
    if prefetched is not None:
        return sorted(prefetched, key=lambda s: s.id)
    return list(run.steps.order_by("id"))


def latest_attempts(run: Run) -> list[StepRun]:
    """One row per step (its latest attempt), in the order the steps were first scheduled."""
    latest: dict[str, StepRun] = {}
    for step_run in _attempts(run):
        latest[step_run.step_id] = step_run
    return sorted(latest.values(), key=lambda s: s.id)


def attempts_by_step(run: Run) -> dict[str, list[StepRun]]:
    grouped: dict[str, list[StepRun]] = {}
    for step_run in _attempts(run):
        grouped.setdefault(step_run.step_id, []).append(step_run)
    return grouped


WORKFLOWS_PER_PAGE = 100


@dataclass(frozen=True)
class WorkflowPage:
    workflows: list[Workflow]
    search: str
    after: str
    next_after: str | None  # the slug the next page starts after; None on the last page


def workflow_page(
    *,
    after: str = "",
    search: str = "",
    hidden: frozenset[int] = frozenset(),
    size: int = WORKFLOWS_PER_PAGE,
) -> WorkflowPage:
    """The workflows page: `size` workflows in slug order after the slug `after` (keyset,
    so a deep page costs what the first does), those whose slug or name contains `search`.
    A page must not grow with the number of workflows (10,000 took 1.7 s to render)."""
    found = Workflow.objects.select_related("published_version").order_by("slug")
    if hidden:
        found = found.exclude(id__in=sorted(hidden))
    if search:
        found = found.filter(Q(slug__icontains=search) | Q(name__icontains=search))
    if after:
        found = found.filter(slug__gt=after)
    rows = list(found[: size + 1])
    more = len(rows) > size
    return WorkflowPage(rows[:size], search, after, rows[size - 1].slug if more else None)


def run_as_json(run: Run) -> dict:
    def iso(value):
        return value.isoformat() if value else None

    return {
        "id": run.pk,
        "workflow": run.workflow.slug,
        "version": run.version.number,
        "status": run.status,
        "origin": run.origin,
        "replay_of": run.replay_of_id,
        "error": run.error,
        "event": run.event_id,
        "correlation_id": run.correlation_id,
        "parent_run": run.parent_step.run_id if run.parent_step_id else None,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "steps": [
            {
                "id": s.step_id,
                "kind": s.kind,
                "status": s.status,
                "attempt": s.attempt,
                "output": s.output,
                "error": s.error,
                "idempotency_key": s.idempotency_key,
                "port": s.port,
                "error_code": s.error_code,
                "worker": s.worker,
                "input": s.input,
                "started_at": iso(s.started_at),
                "finished_at": iso(s.finished_at),
            }
            for s in latest_attempts(run)
        ],
    }
