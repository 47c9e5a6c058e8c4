import logging

import redis
from django.conf import settings
from django.core.management.base import BaseCommand

from workflows import heartbeat
from workflows.events.bus import relay_unpublished
from workflows.loop import Stopper
from workflows.services.runs import enqueue_due_steps

log = logging.getLogger("signalbox.scheduler")


class Command(BaseCommand):
    help = "Fire timers kept in the database (retries) and relay the event outbox."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=0.5)

    def handle(self, *args, interval, **options):
        stopper = Stopper()
        log.info("scheduler starting")
        while not stopper.stopped:
            try:
                heartbeat.beat("scheduler")
                relayed = relay_unpublished(
                    older_than_seconds=settings.SIGNALBOX["OUTBOX_GRACE_SECONDS"]
                )
                enqueued = enqueue_due_steps()
                if relayed or enqueued:
                    log.info("relayed %d event(s), enqueued %d step(s)", relayed, enqueued)
            except redis.RedisError as exc:
                log.warning("redis unavailable (%s); retrying", exc)
            except Exception:
                log.exception("scheduler tick failed")
            stopper.wait(interval)
        log.info("scheduler stopped")
