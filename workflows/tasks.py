"""Celery tasks: ids in, one service call, explicit names. Idempotent by construction."""

from celery import shared_task

from .services import runs


@shared_task(name="signalbox.execute_step", acks_late=True, reject_on_worker_lost=True)
def execute_step_task(step_run_id: int) -> None:
    runs.execute_step(step_run_id=step_run_id)
