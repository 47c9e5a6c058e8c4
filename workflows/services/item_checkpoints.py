"""Per-item checkpoints of a step that runs many items (`for_each`), kept in `StepItemResult`.

An item's output is written as soon as the item succeeded, in its own short transaction, by
the attempt that ran it; any later attempt of the same step in the same run reads them back
and runs only the items that have none. They belong to the run: a replay is a new run and
starts without any. They are not journaled (the journal records the step's joined output),
so `projections.rebuild_run` neither needs nor touches them.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, transaction

from ..models import StepItemResult
from .secrets import mask

log = logging.getLogger("signalbox.runs")


class StepItemCheckpoints:
    """`steps.base.ItemCheckpoints` for one step of one run, as seen by one attempt."""

    def __init__(self, *, run_id: int, step_id: str, attempt: int, secrets: dict[str, str]):
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt
        self.secrets = secrets

    def done(self) -> dict[int, Any]:
        return dict(
            StepItemResult.objects.filter(run_id=self.run_id, step_id=self.step_id).values_list(
                "index", "output"
            )
        )

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


def recorded_items(*, run_id: int, step_id: str) -> dict[int, Any]:
    """The item outputs kept for a step of a run, by index."""
    return StepItemCheckpoints(run_id=run_id, step_id=step_id, attempt=0, secrets={}).done()
