"""Group commit: units of work from many threads share one transaction and one commit.

A commit on PostgreSQL waits for the WAL to reach the disk (about half a millisecond here), and
the audit chain's head row is locked until then, so one issuance per transaction caps a node at
a few hundred issuances per second however many threads it has. Here the first thread to arrive
leads: it runs its own work and everything queued behind it in one transaction, commits once,
and hands each thread its result (or its own exception). Whoever waits longest leads the next
batch. A unit's writes are committed before its caller returns, so the pipeline's invariants
(row and audit entry in one transaction, committed before the certificate leaves) hold unchanged.

Two kinds of unit:
- `run(work)`: any callable; in a shared transaction each runs in its own savepoint, so a failing
  unit is rolled back alone.
- `run_batched(operation, item)`: units of one `BatchOperation` are done set-based, one
  statement per table for the whole group (ca.storage.bulk) instead of a few statements and a
  savepoint each: on PostgreSQL every statement is a round trip, and the leader's round trips
  are what everybody else waits for. If the set-based attempt raises, the
  transaction is rolled back and the batch is done again unit by unit, each in its savepoint, so
  only the unit at fault gets the error (a serial collision, a listener that refuses).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ca.storage import Database

T = TypeVar("T")
# A kept connection idle longer than this goes back to the pool, and the next batch takes one
# through the pool's pre-ping: under load no batch pays a ping, after a quiet spell one does.
_KEPT_CONNECTION_IDLE_SECONDS = 5.0
I = TypeVar("I")  # noqa: E741 - the item type of a batch operation


class GroupCommitFailed(Exception):
    """The transaction a unit shared failed to commit; the cause is the database's error."""


@dataclass(frozen=True)
class BatchOperation(Generic[I, T]):
    """One kind of unit that can be done for many items at once.

    `run_many(session, items)` returns one result per item, in order, or raises (then each item
    goes through `run_one(session, item)` in its own savepoint). Both must write the same rows.
    """

    name: str
    run_one: Callable[[Session, I], T]
    run_many: Callable[[Session, Sequence[I]], Sequence[T]]


class _SetBasedAttemptFailed(Exception):
    """Raised out of the transaction to roll it back before the unit-by-unit retry."""


class _Unit(Generic[T]):
    __slots__ = ("error", "event", "finished", "item", "leader", "operation", "value", "work")

    def __init__(
        self,
        work: Callable[[Session], T] | None,
        operation: BatchOperation[Any, T] | None = None,
        item: Any = None,
    ) -> None:
        self.work = work
        self.operation = operation
        self.item = item
        self.event = threading.Event()
        self.leader = False
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None

    def run_alone(self, session: Session) -> T:
        if self.operation is not None:
            return self.operation.run_one(session, self.item)
        assert self.work is not None
        return self.work(session)


class GroupCommit:
    """Run `work(session)` in a transaction shared with other threads' work (one per process)."""

    def __init__(self, database: Database, *, max_batch: int = 64) -> None:
        self.database = database
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Unit[Any]] = []
        self._busy = False
        self.batches = 0  # how many transactions were committed (for tests and metrics)
        self.set_based_fallbacks = 0  # set-based attempts that had to go unit by unit
        # One connection kept for the leaders (one leader at a time): taking a pooled
        # connection per batch costs a pre-ping round trip on PostgreSQL.
        self._connection: Connection | None = None
        self._connection_pid = 0
        self._connection_used = 0.0

    def run(self, work: Callable[[Session], T]) -> T:
        """Run `work` and commit; returns its result or raises its exception (or the commit's)."""
        return self._run(_Unit(work))

    def run_batched(self, operation: BatchOperation[I, T], item: I) -> T:
        """Do `operation` for `item`, set-based with the other items of its kind in the batch."""
        return self._run(_Unit(None, operation, item))

    def _run(self, unit: _Unit[T]) -> T:
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
            if len(batch) == 1:
                unit = batch[0]
                with self._transaction() as session:
                    try:
                        unit.value = unit.run_alone(session)
                    except Exception as exc:
                        # The unit's own error (a serial collision, say) reaches its caller as
                        # is; only a failure of the commit itself becomes GroupCommitFailed.
                        unit.error = exc
                        raise
            elif not self._commit_set_based(batch):
                self.set_based_fallbacks += 1
                self._commit_unit_by_unit(batch)
            self.batches += 1
        except BaseException as exc:
            # Each waiter raises in its own thread: give each its own exception object.
            for unit in batch:
                if unit.error is None:
                    unit.value = None
                    unit.error = GroupCommitFailed("the shared transaction failed to commit")
                    unit.error.__cause__ = exc

    def _commit_set_based(self, batch: list[_Unit[Any]]) -> bool:
        """One statement per operation for the batch; False (all rolled back) if one raised."""
        groups: dict[str, list[_Unit[Any]]] = {}
        loose: list[_Unit[Any]] = []
        for unit in batch:
            if unit.operation is None:
                loose.append(unit)
            else:
                groups.setdefault(unit.operation.name, []).append(unit)
        if not groups:
            return False
        try:
            with self._transaction() as session:
                for units in groups.values():
                    operation = units[0].operation
                    assert operation is not None
                    try:
                        values = operation.run_many(session, [u.item for u in units])
                    except Exception as exc:
                        raise _SetBasedAttemptFailed from exc
                    for unit, value in zip(units, values, strict=True):
                        unit.value = value
                for unit in loose:
                    self._run_in_savepoint(session, unit)
        except _SetBasedAttemptFailed:
            for unit in batch:
                unit.value = None
                unit.error = None
            return False
        return True

    def _commit_unit_by_unit(self, batch: list[_Unit[Any]]) -> None:
        with self._transaction() as session:
            for unit in batch:
                self._run_in_savepoint(session, unit)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A session in one transaction on the kept connection, as `Database.write()` gives."""
        connection = self._kept_connection()
        try:
            with Session(bind=connection, expire_on_commit=False) as session, session.begin():
                yield session
        except BaseException:
            # Whatever went wrong, the next batch starts on a fresh (pre-pinged) connection.
            self.close()
            raise
        self._connection_used = time.monotonic()

    def _kept_connection(self) -> Connection:
        if self._connection is not None and self._connection_pid != os.getpid():
            # Inherited over fork(): the parent's socket, never to be used or closed here.
            self._connection = None
        if (
            self._connection is not None
            and time.monotonic() - self._connection_used > _KEPT_CONNECTION_IDLE_SECONDS
        ):
            self.close()
        if self._connection is None:
            self._connection = self.database.write_connection()
            self._connection_pid = os.getpid()
            self._connection_used = time.monotonic()
        return self._connection

    def close(self) -> None:
        """Give the kept connection back to the pool (the next batch takes another)."""
        connection, self._connection = self._connection, None
        if connection is not None and self._connection_pid == os.getpid():
            connection.close()

    @staticmethod
    def _run_in_savepoint(session: Session, unit: _Unit[Any]) -> None:
        try:
            with session.begin_nested():
                unit.value = unit.run_alone(session)
        except Exception as exc:
            # Only this unit's savepoint is rolled back; the others commit.
            unit.error = exc
