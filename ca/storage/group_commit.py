"""Group commit: units of work from many threads share one transaction and one commit.

A commit on PostgreSQL waits for the WAL to reach the disk (about half a millisecond here), and
the audit chain's head row is locked until then, so one issuance per transaction caps a node at
a few hundred issuances per second however many threads it has. Here the first thread to arrive
leads: it runs its own work and everything queued behind it in one transaction, each unit in its
own savepoint, commits once, and hands each thread its result (or its own exception). Whoever
waits longest leads the next batch. A unit's writes are committed before its caller returns,
so the pipeline's invariants (row and audit entry in one transaction, committed before the
certificate leaves) hold unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from ca.storage import Database

T = TypeVar("T")

class GroupCommitFailed(Exception):
    """The transaction a unit shared failed to commit; the cause is the database's error."""


class _Unit(Generic[T]):
    __slots__ = ("error", "event", "finished", "leader", "value", "work")

    def __init__(self, work: Callable[[Session], T]) -> None:
        self.work = work
        self.event = threading.Event()
        self.leader = False
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None


class GroupCommit:
    """Run `work(session)` in a transaction shared with other threads' work (one per process)."""

    def __init__(self, database: Database, *, max_batch: int = 64) -> None:
        self.database = database
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Unit[Any]] = []
        self._busy = False
        self.batches = 0  # how many transactions were committed (for tests and metrics)

    def run(self, work: Callable[[Session], T]) -> T:
        """Run `work` and commit; returns its result or raises its exception (or the commit's)."""
        unit: _Unit[T] = _Unit(work)
        with self._lock:
            self._queue.append(unit)
            if not self._busy:
                self._busy = True
                unit.leader = True
        if not unit.leader:
            # No time limit on purpose: a leader always reaches the `finally` in _lead(), which
            # either finishes this unit or makes it the next leader. A waiter that gave up
            # would stay queued, and could be handed the leadership nobody then takes.
            unit.event.wait()
        if not unit.finished:
            self._lead()
        if unit.error is not None:
            raise unit.error
        return unit.value

    def _lead(self) -> None:
        with self._lock:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
        try:
            self._commit(batch)
        finally:
            with self._lock:
                for unit in batch:
                    unit.finished = True
                    unit.event.set()
                if self._queue:
                    successor = self._queue[0]
                    successor.leader = True
                    successor.event.set()
                else:
                    self._busy = False

    def _commit(self, batch: list[_Unit[Any]]) -> None:
        try:
            with self.database.write() as session:
                if len(batch) == 1:
                    batch[0].value = batch[0].work(session)
                else:
                    for unit in batch:
                        try:
                            with session.begin_nested():
                                unit.value = unit.work(session)
                        except Exception as exc:
                            # Only this unit's savepoint is rolled back; the others commit.
                            unit.error = exc
            self.batches += 1
        except BaseException as exc:
            # Each waiter raises in its own thread: give each its own exception object.
            for unit in batch:
                if unit.error is None:
                    unit.value = None
                    unit.error = GroupCommitFailed("the shared transaction failed to commit")
                    unit.error.__cause__ = exc
