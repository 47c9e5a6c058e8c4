"""Rebuild the run and step tables from the journal.

The journal is the record; `Run` and `StepRun` rows are projections written in the same
transactions. `rebuild_run` replays a run's journal into what the rows must hold and
writes it (matching rows by their unique key, so row ids and links survive); `check_run`
reports the differences without writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction

from workflows.core.states import StepStatus
from workflows.runs.advance import idempotency_key
from workflows.runs.models import Run, RunJournal, StepRun

STEP_FIELDS = (
    "kind",
    "status",
    "port",
    "output",
    "input",
    "error",
    "error_code",
    "retryable",
    "idempotency_key",
    "worker",
    "not_before",
    "started_at",
    "finished_at",
    "wake_at",
    "reused_from_id",
)
RUN_FIELDS = ("status", "error", "started_at", "finished_at", "seq")


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass
class Projection:
    run: dict[str, Any] = field(default_factory=dict)
    steps: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)


def project(run: Run) -> Projection:
    """What the journal says the run's rows hold."""
    out = Projection(
        run={"status": "queued", "error": "", "started_at": None, "finished_at": None, "seq": 0}
    )
    for entry in RunJournal.objects.filter(run=run).order_by("seq"):
        data, kind = entry.data, entry.kind
        out.run["seq"] = entry.seq
        if kind == "run.started":
            out.run.update(status="running", started_at=_time(data.get("at")))
        elif kind in ("run.succeeded", "run.failed", "run.cancelled"):
            out.run.update(
                status=kind.split(".", 1)[1],
                error=data.get("error", ""),
                finished_at=_time(data.get("at")),
            )
        elif kind.startswith("step."):
            key = (data["step"], int(data.get("attempt", 1)))
            step = out.steps.setdefault(key, _new_step(run, data))
            _apply_step(step, kind, data)
    return out


def _new_step(run: Run, data: dict) -> dict[str, Any]:
    return {
        "kind": data.get("step_kind", ""),
        "status": StepStatus.QUEUED,
        "port": "",
        "output": None,
        "input": None,
        "error": "",
        "error_code": "",
        "retryable": False,
        "idempotency_key": data.get("idempotency_key")
        or idempotency_key(run.idempotency_base or run.pk, data["step"]),
        "worker": "",
        "not_before": None,
        "started_at": None,
        "finished_at": None,
        "wake_at": None,
        "reused_from_id": None,
    }


def _apply_step(step: dict[str, Any], kind: str, data: dict) -> None:
    if kind == "step.scheduled":
        step.update(
            kind=data.get("step_kind", step["kind"]), not_before=_time(data.get("not_before"))
        )
    elif kind == "step.reused":  # a replay copied a step that already succeeded
        step.update(
            status=StepStatus.SUCCEEDED,
            port=data.get("port", ""),
            output=data.get("output"),
            input=data.get("input"),
            reused_from_id=data.get("reused_from"),
            finished_at=_time(data.get("at")),
        )
    elif kind == "step.started":
        step.update(
            status=StepStatus.RUNNING,
            worker=data.get("worker", ""),
            started_at=_time(data.get("at")),
        )
    elif kind == "step.waiting":
        step.update(
            status=StepStatus.WAITING, wake_at=_time(data.get("wake_at")), output=data.get("output")
        )
    elif kind == "step.skipped":
        step.update(status=StepStatus.SKIPPED, finished_at=_time(data.get("at")))
        if data.get("step_kind"):
            step["kind"] = data["step_kind"]
    elif kind in ("step.succeeded", "step.failed"):
        step.update(
            status=kind.split(".", 1)[1],
            port=data.get("port", ""),
            output=data.get("output"),
            error=data.get("error", ""),
            error_code=data.get("error_code", ""),
            retryable=bool(data.get("retryable", False)),
            finished_at=_time(data.get("at")),
            wake_at=None,
        )
        if data.get("input") is not None:
            step["input"] = data["input"]


def _current(run: Run) -> Projection:
    return Projection(
        run={f: getattr(run, f) for f in RUN_FIELDS},
        steps={
            (s.step_id, s.attempt): {f: getattr(s, f) for f in STEP_FIELDS}
            for s in StepRun.objects.filter(run=run)
        },
    )


def differences(run: Run) -> list[str]:
    """How the rows differ from the journal (empty when they agree)."""
    expected, actual = project(run), _current(run)
    found = [
        f"run.{f}: row {actual.run[f]!r} != journal {expected.run[f]!r}"
        for f in RUN_FIELDS
        if actual.run[f] != expected.run[f]
    ]
    for key in sorted(set(expected.steps) | set(actual.steps)):
        if key not in actual.steps:
            found.append(f"step {key[0]}#{key[1]}: missing row")
        elif key not in expected.steps:
            found.append(f"step {key[0]}#{key[1]}: row not in the journal")
        else:
            found += [
                f"step {key[0]}#{key[1]}.{f}: row {actual.steps[key][f]!r} != journal "
                f"{expected.steps[key][f]!r}"
                for f in STEP_FIELDS
                if actual.steps[key][f] != expected.steps[key][f]
            ]
    return found


def rebuild_run(run: Run) -> None:
    """Rewrite the run's rows from its journal."""
    with transaction.atomic():
        # Lock the run: nothing may append to its journal while its rows are rewritten.
        run = Run.objects.select_for_update().get(pk=run.pk)
        expected = project(run)
        for name, value in expected.run.items():
            setattr(run, name, value)
        run.save(update_fields=list(RUN_FIELDS))
        existing = {(s.step_id, s.attempt): s for s in StepRun.objects.filter(run=run)}
        for key, values in expected.steps.items():
            if key in existing:
                StepRun.objects.filter(pk=existing[key].pk).update(**values)
            else:
                StepRun.objects.create(run=run, step_id=key[0], attempt=key[1], **values)
        for key, row in existing.items():
            if key not in expected.steps:
                row.delete()
