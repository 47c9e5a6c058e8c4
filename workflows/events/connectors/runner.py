"""Running connectors: one thread per enabled connection, in the bus consumer process.

Each thread holds a Redis lease on its connection, so however many bus consumers run,
one reads each connection at a time (per-key order needs a single reader; the others wait
and take over when the lease lapses). It connects, receives a batch, stores it in one
commit (`intake.ingest_batch`), then acknowledges it; on any failure it records the error
on the connection, drops the connection (the broker re-sends what was not acknowledged)
and reconnects after an exponential back-off.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from django.db import connections

from workflows.events.connectors.base import Backoff, ConnectionConfig, consumes
from workflows.events.connectors.intake import DATABASE_DOWN, ingest_batch
from workflows.events.connectors.registry import get
from workflows.infra.redis_client import client as redis_client
from workflows.infra.redis_client import key as redis_key

log = logging.getLogger("signalbox.connectors")

REFRESH_SECONDS = 2.0
LEASE_MS = 15_000
BATCH = 200
RECEIVE_TIMEOUT = 1.0
STOP_SECONDS = 15.0

# Renew only if we still hold it: a lapsed lease another reader took stays theirs.
RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


class Lease:
    def __init__(self, name: str, owner: str):
        self.key, self.owner = redis_key("connector-lease", name), owner
        self._script = redis_client().register_script(RENEW)

    def hold(self) -> bool:
        return bool(self._script(keys=[self.key], args=[self.owner, LEASE_MS]))

    def release(self) -> None:
        conn = redis_client()
        if conn.get(self.key) == self.owner.encode():
            conn.delete(self.key)


def _closed(connector) -> None:
    """Close a connector whose connection may already be broken; a failure to close must not
    end the thread (the broker takes back what was unacknowledged either way)."""
    try:
        connector.close()
    except Exception:  # see above
        log.debug("closing connector failed", exc_info=True)


class ConnectorThread(threading.Thread):
    """Reads one connection until `stop()`."""

    def __init__(self, config: ConnectionConfig, owner: str):
        super().__init__(name=f"connector-{config.name}", daemon=True)
        self.config = config
        self.owner = owner
        self._halt = threading.Event()
        self.backoff = Backoff()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        from workflows.events.connections import record_state

        lease = Lease(self.config.name, self.owner)
        connector = None
        held = False  # whether this thread ever read the connection (then it says it stopped)
        try:
            while not self._halt.is_set():
                try:
                    if not lease.hold():
                        if connector is not None:  # lost it: another reader took over
                            connector = _closed(connector)
                        self._halt.wait(LEASE_MS / 3000)
                        continue
                    held = True
                    if connector is None:
                        record_state(name=self.config.name, state="connecting")
                        connector = get(self.config.kind)(self.config)
                        connector.connect()
                        record_state(name=self.config.name, state="connected")
                        self.backoff.reset()
                    self.pump(connector)
                except Exception as exc:  # noqa: BLE001 - any failure: record, back off, retry
                    if isinstance(exc, DATABASE_DOWN):
                        connections.close_all()
                    if connector is not None:
                        connector = _closed(connector)
                    delay = self.backoff.next_delay()
                    log.warning(
                        "connector %s: %s: %s; reconnecting in %.1f s",
                        self.config.name,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    try:
                        record_state(
                            name=self.config.name,
                            state="reconnecting",
                            error=f"{type(exc).__name__}: {exc}",
                        )
                    except Exception:  # noqa: BLE001 - the database itself may be what is down
                        connections.close_all()
                    self._halt.wait(delay)
        finally:
            if connector is not None:
                _closed(connector)
            with contextlib.suppress(Exception):  # it lapses on its own anyway
                lease.release()
            if held:  # stopped (disabled, changed, removed or shutting down)
                with contextlib.suppress(Exception):
                    record_state(name=self.config.name, state="idle")
            connections.close_all()

    def pump(self, connector) -> int:
        """Receive one batch, commit it, acknowledge it. Returns how many were handled."""
        messages = connector.receive(timeout=RECEIVE_TIMEOUT, max_messages=BATCH)
        if not messages:
            return 0
        ingest_batch(
            messages,
            kind=self.config.kind,
            connection=self.config.name,
            default_type=self.config.default_type,
        )
        connector.ack(messages)  # only now: the events are committed
        return len(messages)


class ConnectorSupervisor(threading.Thread):
    """Starts, restarts and stops the connector threads as connections are added,
    changed, disabled or removed. `stopper` is the process's Stopper."""

    def __init__(self, owner: str, stopper):
        super().__init__(name="connectors", daemon=False)
        self.owner = owner
        self.stopper = stopper
        self.threads: dict[str, ConnectorThread] = {}

    def sync(self) -> None:
        from workflows.events.connections import enabled_configs

        wanted = {c.name: c for c in enabled_configs() if consumes(c.options)}
        stopping = []
        for name, thread in list(self.threads.items()):
            config = wanted.get(name)
            if (
                config is None
                or config.fingerprint() != thread.config.fingerprint()
                or not thread.is_alive()
            ):
                thread.stop()
                stopping.append(thread)
                del self.threads[name]
        # Stopped together, waited for together: each closes its client in a bounded time
        # (STOP_SECONDS covers it), and one slow close must not hold up the others. A
        # replacement starts only once its predecessor is gone or past that wait.
        deadline = time.monotonic() + STOP_SECONDS
        for thread in stopping:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for name, config in wanted.items():
            if name not in self.threads:
                thread = ConnectorThread(config, self.owner)
                self.threads[name] = thread
                thread.start()

    def run(self) -> None:
        log.info("connector supervisor %s starting", self.owner)
        while not self.stopper.stopped:
            try:
                self.sync()
            except DATABASE_DOWN as exc:
                log.warning("database unavailable (%s); connectors keep their settings", exc)
                connections.close_all()
            except Exception:
                log.exception("error while syncing connectors")
            self.stopper.wait(REFRESH_SECONDS)
        for thread in self.threads.values():
            thread.stop()
        deadline = time.monotonic() + STOP_SECONDS
        for thread in self.threads.values():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        connections.close_all()
        log.info("connector supervisor %s stopped", self.owner)
