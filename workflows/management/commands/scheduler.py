import logging
import time

import redis
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import InterfaceError, OperationalError, connections

from workflows.demo import traffic as demo_traffic
from workflows.events.bus import relay_unmatched, relay_unpublished
from workflows.events.schedules import fire_due
from workflows.infra import heartbeat
from workflows.infra.loop import Stopper
from workflows.queries import event_rollups
from workflows.recovery.replay import resume_stranded_batches
from workflows.runs import step_heartbeats
from workflows.runs.sweeps import enqueue_due_steps

log = logging.getLogger("signalbox.scheduler")
# The overview's per-minute rollups change once a minute: no need to look every round.
ROLLUP_EVERY_SECONDS = 10.0


class Command(BaseCommand):
    help = "Fire timers kept in the database (retries, schedules) and relay the event outbox."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=0.5)

    def handle(self, *args, interval, **options):
        stopper = Stopper()
        # When the database was last found away (None: not since the start). Workers cannot
        # write heartbeats while it is away, so leases are judged again only once it has
        # been back for a whole heartbeat timeout.
        self.database_lost_at: float | None = None
        self.rolled_up_at = float("-inf")
        log.info("scheduler starting")
        while not stopper.stopped:
            # Schedules need only the database: their events wait in the outbox while
            # Redis is away, so they fire even when the Redis part below cannot.
            self.guarded(fire_due, "schedule ticks")
            self.guarded(self.relay_and_enqueue, "timers")
            self.guarded(demo_traffic.tick, "demo traffic")  # only while switched on
            self.guarded(resume_stranded_batches, "stranded replay batches")
            self.guarded(self.roll_up_events, "overview rollups")
            stopper.wait(interval)
        log.info("scheduler stopped")

    def relay_and_enqueue(self) -> None:
        heartbeat.beat("scheduler")
        config = settings.SIGNALBOX
        relayed = relay_unpublished(older_than_seconds=config["OUTBOX_GRACE_SECONDS"])
        relayed += relay_unmatched(older_than_seconds=config["REDELIVER_UNMATCHED_SECONDS"])
        enqueued = enqueue_due_steps(judge_leases=self.leases_judgeable())
        if relayed or enqueued:
            log.info("relayed %d event(s), enqueued %d step(s)", relayed, enqueued)

    def roll_up_events(self) -> None:
        if time.monotonic() - self.rolled_up_at < ROLLUP_EVERY_SECONDS:
            return
        self.rolled_up_at = time.monotonic()
        event_rollups.tick()

    def leases_judgeable(self) -> bool:
        if self.database_lost_at is None:
            return True
        back_for = time.monotonic() - self.database_lost_at
        if back_for < step_heartbeats.timeout().total_seconds():
            return False
        self.database_lost_at = None
        return True

    def guarded(self, work, what: str) -> None:
        try:
            work()
        except redis.RedisError as exc:
            log.warning("redis unavailable (%s); retrying %s", exc, what)
        except (OperationalError, InterfaceError) as exc:
            log.warning("database unavailable (%s); retrying %s", exc, what)
            self.database_lost_at = time.monotonic()
            connections.close_all()  # reconnect on the next round
        except Exception:
            log.exception("%s failed", what)
