"""One run as its page shows it: the run, its latest attempts with their details (secrets
masked), its graph and timeline, and the events it emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from workflows.access.secrets import mask, secret_values
from workflows.events.models import Event
from workflows.queries.run_graph import Graph, Timeline, timeline, workflow_graph
from workflows.queries.run_list import RUN_EVENT_STATUSES
from workflows.queries.runs import SHADOW
from workflows.runs.models import Run, RunJournal, StepRun
from workflows.runs.producers import RUN_SOURCE


@dataclass
class StepDetail:
    step_id: str
    kind: str
    latest: StepRun
    attempts: list[StepRun]


@dataclass
class RunView:
    run: Run
    steps: list[StepRun]  # latest attempt of each step
    step_details: list[StepDetail]
    graph: Graph
    timeline: Timeline
    journal: list[RunJournal]
    emitted: list[Event]
    parent: Run | None
    children: list[Run]
    replays: list[Run]


def emitted_events(run_ids: list[int]) -> dict[int, list[Event]]:
    """Events the runs emitted: their run events (looked up by the unique (source, id)) and
    what their emit_event steps published (by the ids their outputs recorded)."""
    if not run_ids:
        return {}
    by_run: dict[int, list[Event]] = {r: [] for r in run_ids}
    names = {f"run-{r}-{s}": r for r in run_ids for s in RUN_EVENT_STATUSES}
    for event in Event.objects.filter(source=RUN_SOURCE, ce_id__in=list(names)):
        by_run[names[event.ce_id]].append(event)
    emitted_ids: dict[int, int] = {}
    for run_id, output in StepRun.objects.filter(
        run_id__in=run_ids, kind="emit_event", status="succeeded"
    ).values_list("run_id", "output"):
        if isinstance(output, dict) and isinstance(output.get("id"), int):
            emitted_ids[output["id"]] = run_id
    for event in Event.objects.filter(id__in=list(emitted_ids)):
        by_run[emitted_ids[event.pk]].append(event)
    for events in by_run.values():
        events.sort(key=lambda e: e.pk)
    return by_run


def _masked(value: Any, secrets: dict[str, str]) -> Any:
    return mask(value, secrets) if secrets else value


def run_view(run_id: int, *, now: datetime | None = None) -> RunView | None:
    run = (
        Run.objects.select_related("workflow", "version", "event", "parent_step", "replay_of")
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        return None
    now = now or timezone.now()
    secrets = secret_values()
    attempts = list(run.steps.order_by("id"))
    for attempt in attempts:
        # Masked when recorded; masked again here, for secrets added since.
        attempt.input = _masked(attempt.input, secrets)
        attempt.output = _masked(attempt.output, secrets)
        attempt.error = _masked(attempt.error, secrets)
    if secrets:
        run.error = _masked(run.error, secrets)
    by_step: dict[str, list[StepRun]] = {}
    for attempt in attempts:
        by_step.setdefault(attempt.step_id, []).append(attempt)
    latest = {step_id: rows[-1] for step_id, rows in by_step.items()}
    steps = sorted(latest.values(), key=lambda s: s.id)
    journal = list(RunJournal.objects.filter(run=run).order_by("seq"))
    for entry in journal:
        entry.data = _masked(entry.data, secrets)
    return RunView(
        run=run,
        steps=steps,
        step_details=[StepDetail(s.step_id, s.kind, s, by_step[s.step_id]) for s in steps],
        graph=workflow_graph(run, latest, {k: len(v) for k, v in by_step.items()}),
        timeline=timeline(run, attempts, now),
        journal=journal,
        emitted=emitted_events([run.pk])[run.pk],
        parent=Run.objects.select_related("workflow").filter(pk=run.parent_step.run_id).first()
        if run.parent_step_id
        else None,
        children=list(
            Run.objects.select_related("workflow").filter(parent_step__run_id=run.pk).order_by("id")
        ),
        replays=list(
            Run.objects.select_related("workflow")
            .filter(replay_of=run)
            .exclude(origin=SHADOW)
            .order_by("id")
        ),
    )
