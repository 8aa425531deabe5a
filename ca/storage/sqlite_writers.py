"""A queue for SQLite writers that hands the write lock on as soon as it is free.

SQLite lets one writer at a time hold a database file. A second `BEGIN IMMEDIATE` waits in
SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries
whatever happens meanwhile: under writes from several threads and worker processes, a lock held
for a millisecond costs the next writer tens of milliseconds (EST enrolment's p99 latency under
load was ~140 ms, mostly this). Writers pass this gate first: the threads of a process queue on a
lock that wakes the next one at release, and processes take an flock(2) on a file beside the
database, retried at sub-millisecond intervals (flock has no timed wait, and a wait without a
bound could hang a request where SQLite would have answered "database is locked").

Behind the gate SQLite's own lock and busy timeout still apply, so a writer that does not pass the
gate (the sqlite3 shell, another tool) stays safe, only not queued.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time

# As SQLite's busy_timeout: a writer waiting longer gets "database is locked".
GATE_TIMEOUT_SECONDS = 30.0
_FIRST_RETRY_SECONDS = 0.0001
_LONGEST_RETRY_SECONDS = 0.001

_gates: dict[tuple[int, str], WriterGate] = {}
_gates_lock = threading.Lock()


class WriterGate:
    """One writer at a time for one database file, across this process's threads and processes."""

    def __init__(self, database_path: str) -> None:
        self.lock_path = database_path + "-writers"
        self._threads = threading.Lock()
        # Opened per process (see writer_gate): flock belongs to an open file description, and
        # one inherited over fork() would be shared with the parent instead of excluding it.
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def enter(self, timeout: float = GATE_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            raise sqlite3.OperationalError("database is locked")
        try:
            retry = _FIRST_RETRY_SECONDS
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise sqlite3.OperationalError("database is locked") from None
                    time.sleep(min(retry, remaining))
                    retry = min(retry * 2, _LONGEST_RETRY_SECONDS)
        except BaseException:
            self._threads.release()
            raise

    def leave(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def writer_gate(database_path: str) -> WriterGate:
    """This process's gate for the database file (one per file, made after any fork)."""
    key = (os.getpid(), os.path.realpath(database_path))
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = WriterGate(key[1])
        return gate


class GatedConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its gate from BEGIN IMMEDIATE until the transaction ends.

    The engine's "begin" event calls `enter_gate()` before BEGIN IMMEDIATE; commit, rollback and
    close leave it once SQLite has ended the transaction (a failed COMMIT keeps the transaction,
    and the gate, until the rollback that follows).
    """

    _gate: WriterGate | None = None
    _in_gate = False

    def join_gate(self, gate: WriterGate) -> None:
        self._gate = gate

    def enter_gate(self) -> None:
        if self._gate is not None and not self._in_gate:
            self._gate.enter()
            self._in_gate = True

    def leave_gate(self) -> None:
        if self._in_gate and self._gate is not None:
            self._in_gate = False
            self._gate.leave()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if not self.in_transaction:
                self.leave_gate()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            if not self.in_transaction:
                self.leave_gate()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_gate()
