"""Group commit: the events of concurrent requests share one transaction and one commit.

A commit is a WAL flush (about a millisecond or more here); a web process taking hundreds of
events a second would spend most of its time waiting for them, one per request. Instead
each web process has one committer thread: requests hand it their parsed `Submission` and
wait; it takes whatever has queued up meanwhile, stores it all with a few statements in one
transaction (events.intake.store), commits, answers every waiting request, and only
then puts the new events on the bus in one pipelined round trip. Nothing is answered 2xx
before its commit.

Marking events published is folded into the next group's transaction (or written alone
after a short idle), so an event costs a share of one commit, not two. An event whose mark
is lost with a crash is still unpublished in the store: the outbox relay appends it again
and the bus consumer's matching is idempotent.

When a group's transaction fails (a row the database refuses, a lost connection), each
submission is tried again alone, so one bad request never fails the others.
"""

from __future__ import annotations

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
# After the bus refused an append, new events are left to the outbox relay this long.
BUS_AWAY_SECONDS = 5.0


class GroupCommitter:
    def __init__(self) -> None:
        self._queue: deque[tuple[event_intake.Submission, Future]] = deque()
        self._ready = threading.Condition()
        self._marks: list[int] = []
        self._bus_away_until = 0.0

    def submit(self, submission: event_intake.Submission) -> Future:
        """Queue the submission; the future resolves to it (with `accepted` or `error`
        set) once its transaction has committed, or raises the database's error."""
        future: Future = Future()
        with self._ready:
            self._queue.append((submission, future))
            self._ready.notify()
        return future

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
                idle = self._ready.wait(MARK_IDLE_SECONDS if self._marks else None)
                if not idle and self._marks:
                    self._ready.release()
                    try:
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
        notify.events_ingested(events=created)

    def _write_marks_alone(self) -> None:
        marks, self._marks = self._marks, []
        try:
            bus.mark_published(marks)
        except DatabaseError as exc:
            log.warning("could not mark %d event(s) published yet: %s", len(marks), exc)
            self._marks = marks + self._marks
            connection.close()


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
