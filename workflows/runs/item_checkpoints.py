"""Per-item checkpoints of a step that runs many items (`for_each`), kept in `StepItemResult`.

An item's output is written as soon as the item succeeded, in its own short transaction, by
the attempt that ran it; any later attempt of the same step in the same run reads them back
and runs only the items that have none. A replay is a new run, but one that keeps its
original's idempotency keys and input, on the same definition of the step, would send the
very same item requests again: it inherits the original's checkpoints (`inherited_runs`),
so replaying a loop that failed on one item of a thousand calls that one item. They are not
journaled (the journal records the step's joined output),
so `projections.rebuild_run` neither needs nor touches them.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, transaction

from workflows.access.secrets import mask
from workflows.catalog.definition_parsing import definition_for
from workflows.runs.models import Run, StepItemResult

log = logging.getLogger("signalbox.runs")


class StepItemCheckpoints:
    """`steps.base.ItemCheckpoints` for one step of one run, as seen by one attempt."""

    def __init__(
        self,
        *,
        run_id: int,
        step_id: str,
        attempt: int,
        secrets: dict[str, str],
        inherited: tuple[int, ...] = (),
    ):
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt
        self.secrets = secrets
        self.inherited = inherited  # runs whose checkpoints count as this run's, nearest first

    def done(self) -> dict[int, Any]:
        runs = [self.run_id, *self.inherited]
        rows = StepItemResult.objects.filter(run_id__in=runs, step_id=self.step_id)
        nearest = {run_id: n for n, run_id in enumerate(runs)}
        found: dict[int, tuple[int, Any]] = {}
        for run_id, index, output in rows.values_list("run_id", "index", "output"):
            rank = nearest[run_id]
            if index not in found or rank < found[index][0]:
                found[index] = (rank, output)
        return {index: output for index, (_rank, output) in found.items()}

    def record(self, index: int, output: Any) -> None:
        # Masked like every stored output; a reused item's masked output ends up in the
        # step's output exactly as a fresh one would after the step's own masking.
        row = StepItemResult(
            run_id=self.run_id,
            step_id=self.step_id,
            index=index,
            output=mask(output, self.secrets),
            attempt=self.attempt,
        )
        try:
            # A savepoint when called inside a transaction, so a failure cannot poison it.
            with transaction.atomic():
                # ON CONFLICT DO NOTHING: an index already recorded (by a stale attempt still
                # running alongside its retry) keeps its first output.
                StepItemResult.objects.bulk_create([row], ignore_conflicts=True)
        except DatabaseError:
            # A checkpoint only saves work: without it the item runs again on a retry, with
            # the same idempotency key. It must not fail an item that succeeded.
            log.warning(
                "run %s step %s: could not checkpoint item %s",
                self.run_id,
                self.step_id,
                index,
                exc_info=True,
            )


def inherited_runs(run: Run, step_id: str, *, limit: int = 20) -> tuple[int, ...]:
    """The runs up a replay chain whose item checkpoints this run's step may reuse: each
    link a replay that kept its original's idempotency keys (so the same item requests
    carry the same keys) and its input, with the step defined the same way in both
    versions. A renewed key, an edited input or a changed step ends the chain."""
    chain: list[int] = []
    current = run
    while (
        len(chain) < limit
        and current.replay_of_id is not None
        and current.origin == "replay"
        and current.idempotency_base is not None
        and current.input_override is None
    ):
        original = Run.objects.select_related("version").filter(pk=current.replay_of_id).first()
        if original is None:
            break
        step = definition_for(current.version).steps.get(step_id)
        if step is None or step != definition_for(original.version).steps.get(step_id):
            break
        chain.append(original.pk)
        current = original
    return tuple(chain)


def recorded_items(*, run_id: int, step_id: str) -> dict[int, Any]:
    """The item outputs kept for a step of a run, by index."""
    return StepItemCheckpoints(run_id=run_id, step_id=step_id, attempt=0, secrets={}).done()
