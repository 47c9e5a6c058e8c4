"""Group commit: the events of concurrent requests share one transaction and one commit.

A commit is a WAL flush (about a millisecond or more here); a web process taking hundreds of
events a second would spend most of its time waiting for them, one per request. Instead
each web process has one committer thread: requests hand it their parsed `Submission` and
wait; it takes whatever has queued up meanwhile, stores it all in one transaction, answers
every waiting request once that has committed, and only then puts the new events on the bus
in one pipelined round trip. Nothing is answered 2xx before its commit. On PostgreSQL the
usual group is one statement that is its own transaction (events.intake.store_at_once: no
BEGIN, SAVEPOINT or COMMIT round trips); a group with a token or a schema to check takes
the exact way (events.intake.store) in a transaction.

Marking events published is folded into the next group's transaction (or written alone
after a short idle), so an event costs a share of one commit, not two. An event whose mark
is lost with a crash is still unpublished in the store: the outbox relay appends it again
and the bus consumer's matching is idempotent.

When a group's transaction fails (a row the database refuses, a lost connection), each
submission is tried again alone, so one bad request never fails the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future

from django.db import DatabaseError, connection, transaction

from workflows.events import bus
from workflows.events import intake as event_intake
from workflows.live import notify

log = logging.getLogger("signalbox.ingest")

# At most this many events in one transaction; more wait for the next one.
MAX_GROUP_EVENTS = 2000
# Publication marks wait this long for a group to ride along with before they are written
# alone (far inside the outbox relay's grace, so a published event is never sent twice).
MARK_IDLE_SECONDS = 0.05
# The live pages' "events ingested" hint goes out at once after a quiet spell, then at most
# this often, carrying every group committed meanwhile: each hint is a channel-layer send
# (two or three Redis round trips on the process's push thread), which cost as much CPU as
# a group's store while groups of 2-5 requests came every few milliseconds.
HINT_INTERVAL_SECONDS = 0.01
# After the bus refused an append, new events are left to the outbox relay this long.
BUS_AWAY_SECONDS = 5.0


class GroupCommitter:
    def __init__(self) -> None:
        self._queue: deque[tuple[event_intake.Submission, Future]] = deque()
        self._ready = threading.Condition()
        self._marks: list[int] = []
        self._hints: list = []  # committed events whose live hint is still to go
        self._hinted_at = -HINT_INTERVAL_SECONDS
        self._bus_away_until = 0.0

    def submit(self, submission: event_intake.Submission) -> Future:
        """Queue the submission; the future resolves to it (with `accepted` or `error`
        set) once its transaction has committed, or raises the database's error."""
        future: Future = Future()
        self._enqueue(submission, future)
        return future

    def submit_async(self, submission: event_intake.Submission) -> asyncio.Future:
        """`submit` for a caller on an event loop (the ingest fast path): the same answer
        as an asyncio future of the running loop, handed over with one thread-safe call,
        without a concurrent Future chained to it (~a tenth of a request's CPU)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(submission, _LoopWaiter(loop, future))
        return future

    def _enqueue(self, submission: event_intake.Submission, waiter) -> None:
        with self._ready:
            self._queue.append((submission, waiter))
            self._ready.notify()

    def run_forever(self) -> None:
        while True:
            group = self._take()
            try:
                self._commit(group)
            except Exception:  # the committer must outlive any one group
                log.exception("group commit failed")
                for _, future in group:
                    if not future.done():
                        future.set_exception(RuntimeError("group commit failed"))

    def _take(self) -> list[tuple[event_intake.Submission, Future]]:
        with self._ready:
            while not self._queue:
                if self._hints:
                    timeout = max(0.0, self._hinted_at + HINT_INTERVAL_SECONDS - time.monotonic())
                else:
                    timeout = MARK_IDLE_SECONDS if self._marks else None
                if self._ready.wait(timeout) or not (self._hints or self._marks):
                    continue
                self._ready.release()
                try:
                    if self._hints:
                        self._send_hints()
                    else:
                        self._write_marks_alone()
                finally:
                    self._ready.acquire()
            group, events = [], 0
            while self._queue and (not group or events < MAX_GROUP_EVENTS):
                item = self._queue.popleft()
                group.append(item)
                events += len(item[0].envelopes)
            return group

    def _commit(self, group: list[tuple[event_intake.Submission, Future]]) -> None:
        # The thread keeps its connection (and a pooled one stays checked out) for good;
        # one that failed is closed, and the next statement opens a new one.
        submissions = [submission for submission, _ in group]
        try:
            marks, self._marks = self._marks, []
            created = None
            if connection.vendor == "postgresql":
                # Usually one statement, committed on its own (events.intake.store_at_once).
                created = event_intake.store_at_once(submissions, mark_published=marks)
            if created is None:  # a token or a schema to check: the exact way
                with transaction.atomic():
                    created = event_intake.store(submissions, mark_published=marks)
        except DatabaseError as exc:
            connection.close()
            self._marks = marks + self._marks
            log.warning("a group of %d request(s) failed (%s); storing each alone", len(group), exc)
            created = self._commit_each(group)
        else:
            for submission, future in group:
                future.set_result(submission)
        self._publish(created)

    def _commit_each(self, group) -> list:
        created = []
        for submission, future in group:
            submission.accepted, submission.error = [], None
            try:
                with transaction.atomic():
                    created.extend(event_intake.store([submission]))
            except DatabaseError as exc:
                connection.close()
                future.set_exception(exc)
            else:
                future.set_result(submission)
        return created

    def _publish(self, created: list) -> None:
        if not created:
            return
        # After a failed append the outbox relay publishes for a while: a Redis that does not
        # answer would otherwise hold every group, and its waiting requests, for the whole
        # socket timeout (tests/chaos network-faults).
        if time.monotonic() >= self._bus_away_until:
            if bus.append_new(created):
                self._marks.extend(event.pk for event in created)
            else:
                self._bus_away_until = time.monotonic() + BUS_AWAY_SECONDS
        self._hints.extend(created)
        if time.monotonic() >= self._hinted_at + HINT_INTERVAL_SECONDS:
            self._send_hints()
        # else _take sends them when the interval is up, if no group came first

    def _send_hints(self) -> None:
        hints, self._hints = self._hints, []
        self._hinted_at = time.monotonic()
        notify.events_ingested(events=hints)

    def _write_marks_alone(self) -> None:
        marks, self._marks = self._marks, []
        try:
            bus.mark_published(marks)
        except DatabaseError as exc:
            log.warning("could not mark %d event(s) published yet: %s", len(marks), exc)
            self._marks = marks + self._marks
            connection.close()


class _LoopWaiter:
    """What the committer thread settles for `submit_async`: the part of a Future's
    interface it uses, passed on to the loop's future on the loop's own thread."""

    __slots__ = ("future", "loop", "settled")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
        self.loop, self.future, self.settled = loop, future, False

    def done(self) -> bool:
        return self.settled

    def set_result(self, result) -> None:
        self._settle(result, None)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(None, exc)

    def _settle(self, result, exc: BaseException | None) -> None:
        self.settled = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self.loop.call_soon_threadsafe(_settle_on_loop, self.future, result, exc)


def _settle_on_loop(future: asyncio.Future, result, exc: BaseException | None) -> None:
    if future.done():  # the request was cancelled (its client went away)
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


_committer: GroupCommitter | None = None
_committer_pid: int | None = None
_lock = threading.Lock()


def committer() -> GroupCommitter:
    """This process's committer, its thread started on first use (again after a fork)."""
    global _committer, _committer_pid
    if _committer is None or _committer_pid != os.getpid():
        with _lock:
            if _committer is None or _committer_pid != os.getpid():
                made = GroupCommitter()
                threading.Thread(
                    target=made.run_forever, name="signalbox-group-commit", daemon=True
                ).start()
                _committer, _committer_pid = made, os.getpid()
    return _committer
