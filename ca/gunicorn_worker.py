"""The gunicorn worker `privca serve` runs: gthread, with connections spread evenly over workers.

Every worker waits on the one shared listening socket and the kernel wakes them all for a new
connection; whichever calls accept() first gets it. A worker whose main thread is waiting for
its GIL (its request threads or its job runner are busy) loses that race, and with keep-alive a
connection stays where it landed. Measured with 16 keep-alive EST clients over TLS on 2 workers:
now and then all 16 connections sat in one worker, which ran on one core while the other idled,
and throughput at 16 connections fell to two thirds of that at 8. Waiting a fixed time before
accepting when busy did not fix it: both workers waited, and the GIL decided again.

So the workers publish how many connections each holds in a small array shared with the
arbiter (`ConnectionCounts`); counted here, because gunicorn's own `nr_conns` drifts below zero
(it is decremented more often than incremented). A worker holding more than the least loaded
one lets that one go first, checking again every DEFER_STEP_SECONDS; after MAX_DEFER_SECONDS it
accepts anyway (the other worker may be stuck), so no connection waits longer than that.
"""

from __future__ import annotations

import ctypes
import time
from multiprocessing.sharedctypes import RawArray
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

DEFER_STEP_SECONDS = 0.002
MAX_DEFER_SECONDS = 0.05
_FREE = -1


class ConnectionCounts:
    """Open connections per worker slot, in memory the arbiter shares with the workers it forks.

    Slots are handed out by the arbiter (`assign`, before the fork) and given back when a worker
    exits (`release`); a free slot holds -1 and is left out of every comparison.
    """

    def __init__(self, slots: int) -> None:
        self._counts = RawArray(ctypes.c_int, [_FREE] * slots)

    def assign(self, live_slots: set[int]) -> int | None:
        """A slot no live worker holds, reset to 0; None when all are taken (no balancing)."""
        for slot in range(len(self._counts)):
            if slot not in live_slots:
                self._counts[slot] = 0
                return slot
        return None

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self._counts[slot] = _FREE

    def publish(self, slot: int, connections: int) -> None:
        self._counts[slot] = connections

    def busier_than_another(self, slot: int) -> bool:
        """Whether the worker in `slot` holds more connections than some other live worker."""
        least = self.least_loaded_other(slot)
        return least is not None and self._counts[slot] > least

    def least_loaded_other(self, slot: int) -> int | None:
        """The fewest connections any other live worker holds; None if there is no other."""
        others = [c for i, c in enumerate(self._counts) if i != slot and c != _FREE]
        return min(others) if others else None


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]
    counts: ConnectionCounts | None = None  # set by the arbiter before it forks (ca.serve)
    slot: int | None = None  # this worker's slot in `counts`, set by the arbiter in pre_fork

    _in_flight = 0  # connections handed to the thread pool and not finished yet

    def enqueue_req(self, conn: Any) -> None:
        self._in_flight += 1  # enqueue_req and finish_request both run on the main thread
        super().enqueue_req(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        self._in_flight -= 1
        super().finish_request(conn, fs)

    def open_connections(self) -> int:
        """Connections this worker holds: in a request, kept alive, or waiting for a first byte."""
        return self._in_flight + len(self.keepalived_conns) + len(self.pending_conns)

    def notify(self) -> None:
        super().notify()  # once per turn of the event loop: a good time to publish the count
        self._publish()

    def accept(self, listener: Any) -> None:
        # Published first: while this (main) thread waits, its own count cannot change.
        self._publish()
        deadline = time.monotonic() + MAX_DEFER_SECONDS
        while self.busier_than_another() and time.monotonic() < deadline:
            time.sleep(DEFER_STEP_SECONDS)
        super().accept(listener)  # EAGAIN (another worker took it) is handled there
        self._publish()

    def busier_than_another(self) -> bool:
        """Whether another worker holds fewer connections: it should accept first, and run the
        due jobs (this worker's job runner asks from its own thread), since background work in
        a worker competes with that worker's requests for the GIL."""
        if self.counts is None or self.slot is None:
            return False
        return self.counts.busier_than_another(self.slot)

    def _publish(self) -> None:
        if self.counts is not None and self.slot is not None:
            self.counts.publish(self.slot, self.open_connections())


def pre_fork(server: Any, worker: Any) -> None:
    """gunicorn hook (arbiter, before the fork): give the new worker a free slot."""
    counts = BalancedThreadWorker.counts
    if counts is not None:
        worker.slot = counts.assign({w.slot for w in server.WORKERS.values()})


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook (arbiter): the exited worker's slot is free again."""
    counts = BalancedThreadWorker.counts
    if counts is not None:
        counts.release(getattr(worker, "slot", None))
