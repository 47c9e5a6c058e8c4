"""Send the Celery tasks that the services start, by name.

The tasks (workflows/tasks.py) call the services, and the services only name the tasks they
start: the dependency points one way. A name is the task's explicit `name=`; the task
itself is looked up in the Celery app, where `workflows.apps` registers every task when
Django starts, in every process that can send one (web, bus consumer, scheduler, worker).
Looked up at each send, so a test that swaps a task's `apply_async` sees what is sent.
"""

from __future__ import annotations

from celery import current_app
from django.db import transaction

EXECUTE_STEP = "signalbox.execute_step"
RUN_FINISHED = "signalbox.run_finished"
PROCESS_REPLAY_BATCH = "signalbox.process_replay_batch"


def task(name: str):
    return current_app.tasks[name]


def send(name: str, *args) -> None:
    task(name).delay(*args)


def send_on_commit(name: str, *args) -> None:
    """Send after the caller's transaction commits (at once outside one). Robust: a broker
    that is away costs only this message; the row that asked for it stays in the database
    and the scheduler's sweeps send it again."""
    transaction.on_commit(lambda: send(name, *args), robust=True)
