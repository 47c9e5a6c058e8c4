"""Keep Celery workers alive when Redis goes away while a task is running.

Celery 5.7.0's worker, on losing the broker, detaches the kombu transport from the
connection (`collect()`) and then closes the connection. Closing the Redis channel restores
its unacknowledged messages (with `acks_late`, every running task has one) through that
detached transport; kombu then reads `transport.client.hostname` from None and the
AttributeError, which nobody expects there, kills the worker instead of letting it
reconnect (seen in tests/test_outbox.py). Also a late ack from a task that finished meanwhile
takes the same path.

Here a channel whose transport is detached raises redis' ConnectionError instead: kombu and
Celery treat that as "the broker is away" (ignored while closing; "Couldn't ack" logged for
a late ack) and the worker reconnects. Nothing is lost by skipping that restore: the
messages are in Redis' unacked hash (restored after the visibility timeout) or, if Redis
lost them, the scheduler enqueues queued steps again from the database.
"""

from __future__ import annotations

import functools


def apply() -> None:
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "signalbox_patched", False):
        return

    @functools.wraps(original)
    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return original(self, asynchronous=asynchronous)

    _connparams.signalbox_patched = True
    kombu_redis.Channel._connparams = _connparams
