"""The Celery application; tasks live in workflows/tasks.py."""

import os

from celery import Celery, signals

from orchestrator import broker_recovery

broker_recovery.apply()  # a worker must survive Redis going away mid-task
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

app = Celery("signalbox")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.celeryd_init.connect
def remember_node_name(sender=None, **_kwargs):
    """Name attempts after the Celery node (`name@host`, as the workers page shows it),
    not only the host name: several workers on one host, or hosts that share a name (one
    machine's network namespaces), stay told apart. Set before the pool forks, so its
    processes inherit it."""
    if sender:
        os.environ["SIGNALBOX_WORKER_NODE"] = str(sender)


@signals.setup_logging.connect
def _django_logging(**_kwargs) -> None:
    """Workers log as every other process does (settings.LOGGING: the format and the ids
    of orchestrator/logging_config.py); with a receiver here Celery adds no handler of its own."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
