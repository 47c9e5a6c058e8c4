"""The sink clients a process keeps: one per broker connection (and its settings), reused by
every publish to it, so a step pays a broker handshake once per worker process rather than
on every attempt (a Kafka producer, an AMQP connection and channel, a NATS or MQTT session).

- Keyed by `Sink.client_key` (the connection's fingerprint): an edited connection (URL,
  credentials, options) gets a new client; the old one is closed when it is replaced.
- Checked before use (`SinkClient.usable`) and dropped after any failure; a publish that
  fails as retryable on a client that had been used before is tried once more on a new
  one, since the likeliest cause is a connection that died while idle (a broker restart).
  A message the broker did take before the old connection died may then arrive twice,
  with the same CloudEvent id, as it may on a retried step.
- Thread-safe: the table has its own lock; a client that is not `shared` is used by one
  thread at a time.
- Closed at worker shutdown (`close_all`, from Celery's shutdown signals and atexit); a
  forked child forgets its parent's clients without closing them (the sockets are the
  parent's).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workflows.events.connectors.sink_errors import SinkError

if TYPE_CHECKING:
    from workflows.events.connectors.sink import Outgoing, Sink, SinkClient

log = logging.getLogger("signalbox.connectors")


@dataclass
class _Kept:
    client: SinkClient
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: bool = False  # has published before: a failure may be a connection gone stale


_table: dict[tuple, _Kept] = {}
_table_lock = threading.Lock()
# How many clients this process opened (tests read it to see reuse and reconnects).
opened = 0


def _forget_after_fork() -> None:
    global _table_lock, opened
    _table.clear()
    _table_lock = threading.Lock()
    opened = 0


os.register_at_fork(after_in_child=_forget_after_fork)


def _close(client: SinkClient) -> None:
    try:
        client.close()
    except Exception:  # closing a broken client must not fail a publish
        log.debug("closing a sink client failed", exc_info=True)


def _checkout(sink: Sink, key: tuple, *, timeout: float) -> _Kept:
    global opened
    with _table_lock:
        kept = _table.get(key)
    if kept is not None:
        if not kept.client.shared and not kept.lock.acquire(blocking=False):
            return kept  # another thread is publishing on it: alive; wait for it there
        try:
            alive = kept.client.usable()
        except Exception:  # noqa: BLE001 - a client that cannot say is not usable
            alive = False
        finally:
            if not kept.client.shared:
                kept.lock.release()
        if alive:
            return kept
        _drop(key, kept)
    client = sink.open(timeout=timeout)  # outside the lock: a handshake takes a while
    with _table_lock:
        opened += 1
        current = _table.get(key)
        if current is None:
            _table[key] = current = _Kept(client)
            client = None  # kept
    if client is not None:  # another thread opened one meanwhile: use that one
        _close(client)
    return current


def _drop(key: tuple, kept: _Kept) -> None:
    with _table_lock:
        if _table.get(key) is kept:
            del _table[key]
    _close(kept.client)


def publish(sink: Sink, message: Outgoing, target: dict[str, Any], *, timeout: float) -> dict:
    """Publish on the process's client of `sink`'s connection; see the module's docstring."""
    key = sink.client_key(timeout=timeout)
    _retire_older(key)
    for last_try in (False, True):
        kept = _checkout(sink, key, timeout=timeout)
        try:
            with contextlib.nullcontext() if kept.client.shared else kept.lock:
                receipt = kept.client.send(message, target, timeout=timeout)
        except SinkError as exc:
            _drop(key, kept)
            if last_try or not kept.used or not exc.retryable:
                raise
            log.info("sink %s: a kept client failed (%s); once more on a new one", sink.kind, exc)
            continue
        except BaseException:
            _drop(key, kept)
            raise
        kept.used = True
        return receipt
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _retire_older(key: tuple) -> None:
    """Close the clients of this connection opened with settings it no longer has."""
    with _table_lock:
        stale = [(k, kept) for k, kept in _table.items() if k[:2] == key[:2] and k[2] != key[2]]
        for k, _kept in stale:
            del _table[k]
    for _k, kept in stale:
        _close(kept.client)


def kept_clients() -> int:
    """How many clients this process holds now."""
    with _table_lock:
        return len(_table)


def close_all() -> None:
    """Close every kept client (worker shutdown; tests)."""
    with _table_lock:
        kept = list(_table.values())
        _table.clear()
    for each in kept:
        _close(each.client)


atexit.register(close_all)
