"""The Celery application; tasks live in workflows/tasks.py."""

import os

from celery import Celery

from . import broker_recovery

broker_recovery.apply()  # a worker must survive Redis going away mid-task
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

app = Celery("signalbox")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
