"""Celery tasks: ids in, one service call, explicit names. Idempotent by construction."""

from celery import shared_task
from celery.signals import task_postrun, task_prerun, worker_process_shutdown, worker_shutdown
from django.db import close_old_connections

from workflows.runs.task_queue import EXECUTE_STEP, PROCESS_REPLAY_BATCH, RUN_FINISHED


@task_prerun.connect
@task_postrun.connect
def _connection_hygiene(task=None, **_kwargs) -> None:
    """Around every task, what Django does around every request: drop a connection that
    errored and is no longer usable or that outlived CONN_MAX_AGE, and health-check the
    kept one before its next use (settings.CELERY_DB_REUSE_MAX keeps it between tasks).
    Not for a task applied eagerly: it runs inside its caller's connection and transaction."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()


@task_postrun.connect
def _flush_step_metrics(**_kwargs) -> None:
    """The step durations this task observed, to Redis in one pipeline (step_metrics)."""
    from workflows.infra import step_metrics

    step_metrics.flush()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_sink_clients(**_kwargs) -> None:
    """Say goodbye to the brokers the publish and emit_event steps kept connections to (a
    prefork child ends with os._exit: atexit alone would not run)."""
    from workflows.events.connectors import sink_clients

    sink_clients.close_all()


@shared_task(name=EXECUTE_STEP, acks_late=True, reject_on_worker_lost=True)
def execute_step_task(step_run_id: int) -> None:
    from workflows.runs.execution import execute_step

    execute_step(step_run_id=step_run_id)


@shared_task(name=RUN_FINISHED, acks_late=True, reject_on_worker_lost=True)
def run_finished_task(run_id: int) -> None:
    """After a run finished: resume its parent step, start queued runs of its workflow."""
    from workflows.runs.control import after_run_finished

    after_run_finished(run_id=run_id)


@shared_task(name=PROCESS_REPLAY_BATCH, acks_late=True, reject_on_worker_lost=True)
def process_replay_batch_task(batch_id: int) -> None:
    """Work through a bulk replay or shadow batch at its rate limit (resumes if redelivered)."""
    from workflows.recovery.replay import process_batch

    process_batch(batch_id=batch_id)
