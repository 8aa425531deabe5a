"""Persisted background jobs: enqueue inside any transaction, run by any number of processes.

A job is claimed with `SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite's BEGIN IMMEDIATE
serialises claimers instead), marked running with a lease, and either completed, retried with
exponential backoff, or failed after `max_attempts`. A lease that expires (a worker died) makes
the job claimable again. `unique_key` debounces: while a job with that key is queued, enqueueing
another one with the same key does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from ca.storage.bulk import execute_statement, fetch_rows, insert_many
from ca.storage.models import JobRow

if TYPE_CHECKING:
    from ca.core import CACore

log = logging.getLogger("privca.jobs")

LEASE = timedelta(minutes=5)
BACKOFF_BASE = 2.0
BACKOFF_CAP = timedelta(hours=1)
# A runner that defers to a less busy process still runs due jobs after this many polls.
MAX_DEFERRED_POLLS = 4


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    locked_by: str = ""  # the runner holding the lease


# A handler returns None, or COMPLETED when it marked the job done itself with `complete()`.
Handler = Callable[["CACore", Job], object]
COMPLETED = "completed"


class RetryLater(Exception):
    """Raised by a handler for a transient failure: retry with backoff, not counted as broken."""


# Built once: constructing the statement cost more than running it (enqueue is on hot paths).
_QUEUED_WITH_KEY = (
    select(func.count())
    .select_from(JobRow)
    .where(JobRow.unique_key == bindparam("unique_key"), JobRow.status == "queued")
)


def enqueue(
    session: Session,
    kind: str,
    payload: Mapping[str, Any],
    *,
    run_at: datetime,
    unique_key: str | None = None,
    max_attempts: int = 5,
) -> bool:
    """Add a job in the caller's transaction; False when a queued job already has `unique_key`."""
    if unique_key is not None:
        parameters = {"unique_key": unique_key}
        ((queued,),) = fetch_rows(session.connection(), _QUEUED_WITH_KEY, parameters)
        if queued:
            return False
    _insert(
        session,
        kind,
        payload,
        run_at=run_at,
        max_attempts=max_attempts,
        unique_key=unique_key,
        status="queued",
        attempts=0,
    )
    return True


def enqueue_leased(
    session: Session,
    kind: str,
    payload: Mapping[str, Any],
    *,
    now: datetime,
    holder: str,
    max_attempts: int = 5,
) -> Job:
    """Add a job that the caller runs itself right after the commit (`JobRunner.run_claimed`).

    It is written already claimed, running and leased to `holder` in its first attempt, so no
    runner takes it and the caller needs no claiming transaction of its own. Should the caller
    die before finishing it, the lease expires and any runner takes the job over, as it does
    from a runner that died.
    """
    job_id, text = _insert(
        session,
        kind,
        payload,
        run_at=now,
        max_attempts=max_attempts,
        status="running",
        attempts=1,
        locked_by=holder,
        locked_until=now + LEASE,
    )
    return Job(job_id, kind, json.loads(text), 1, holder)


def _insert(
    session: Session,
    kind: str,
    payload: Mapping[str, Any],
    *,
    run_at: datetime,
    max_attempts: int,
    **state: Any,
) -> tuple[int, str]:
    """One job row; its id and its payload as stored."""
    text = json.dumps(dict(payload), sort_keys=True)
    row = {
        "kind": kind,
        "payload": text,
        "run_at": run_at,
        "created_at": run_at,
        "max_attempts": max_attempts,
        **state,
    }
    # A Core insert below SQLAlchemy's execution machinery on PostgreSQL (ca.storage.bulk):
    # every validation and every issuance's OCSP pre-signing writes one.
    (inserted,) = insert_many(session.connection(), JobRow.__table__, [row], returning=("id",))
    return inserted.id, text


def complete(session: Session, job: Job, now: datetime) -> bool:
    """Mark `job` done in the handler's own transaction, so its outcome and the job's completion
    commit together and the runner needs no second transaction; the handler then returns
    COMPLETED. False (nothing changed) if the lease was lost to another runner."""
    return _mark_done(session, job, now)


# One UPDATE guarded by the lease: a runner whose lease was taken over changes nothing. A Core
# statement, run below SQLAlchemy's execution machinery on PostgreSQL: every job ends with it.
_MARK_DONE = (
    update(JobRow.__table__)
    .where(
        JobRow.__table__.c.id == bindparam("job_id"),
        JobRow.__table__.c.status == "running",
        JobRow.__table__.c.locked_by == bindparam("holder"),
    )
    .values(
        status="done",
        finished_at=bindparam("at"),
        last_error=None,
        locked_by=None,
        locked_until=None,
    )
)


def _mark_done(session: Session, job: Job, now: datetime) -> bool:
    result = execute_statement(
        session.connection(), _MARK_DONE, {"job_id": job.id, "holder": job.locked_by, "at": now}
    )
    return result.rowcount == 1


def backoff(attempts: int) -> timedelta:
    return min(timedelta(seconds=BACKOFF_BASE**attempts), BACKOFF_CAP)


class JobRunner:
    """Claims and runs due jobs; one per process is enough, any number of processes may run."""

    def __init__(self, core: CACore, handlers: Mapping[str, Handler]) -> None:
        self.core = core
        self.handlers = dict(handlers)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self._stop = threading.Event()

    def _due(self, now: datetime, job_id: int | None) -> Select[Any]:
        statement = select(JobRow).where(
            or_(
                (JobRow.status == "queued") & (JobRow.run_at <= now),
                (JobRow.status == "running") & (JobRow.locked_until < now),
            ),
            JobRow.kind.in_(list(self.handlers)),
        )
        if job_id is not None:
            statement = statement.where(JobRow.id == job_id)
        return statement.order_by(JobRow.run_at).limit(1)

    def claim(self, job_id: int | None = None) -> Job | None:
        """Take the oldest due job (or job `job_id` if it is due) with a lease; None if none."""
        database = self.core.database
        now = self.core.now()
        if job_id is None:
            # An idle runner polls often: look without a write transaction first (on SQLite a
            # write transaction takes the database's write lock), lock only when there is work.
            with database.read() as session:
                if session.scalar(self._due(now, None).with_only_columns(JobRow.id)) is None:
                    return None
        with database.write() as session:
            statement = self._due(now, job_id)
            row = session.scalars(database.for_update(statement, skip_locked=True)).first()
            if row is None:
                return None
            row.status = "running"
            row.locked_by = self.worker_id
            row.locked_until = now + LEASE
            row.attempts += 1
            return Job(row.id, row.kind, json.loads(row.payload), row.attempts, self.worker_id)

    def run_once(self, job_id: int | None = None) -> bool:
        """Run one due job (job `job_id` only, if given) if there is one; True if a job ran
        (successfully or not)."""
        job = self.claim(job_id)
        if job is None:
            return False
        self.run_claimed(job)
        return True

    def run_claimed(self, job: Job) -> None:
        """Run a job this process holds the lease of (from `claim` or `enqueue_leased`) and
        record its outcome: done, retried with backoff, or failed."""
        try:
            outcome = self.handlers[job.kind](self.core, job)
        except Exception as exc:
            transient = isinstance(exc, RetryLater)
            if not transient:
                log.exception("job %s (%s) failed", job.id, job.kind)
            self.core.metrics.jobs_failed.labels(kind=job.kind).inc()
            self._finish(job, error=f"{type(exc).__name__}: {exc}"[:2000])
            return
        self.core.metrics.jobs_completed.labels(kind=job.kind).inc()
        if outcome != COMPLETED:
            self._finish(job, error=None)

    def _finish(self, job: Job, *, error: str | None) -> None:
        now = self.core.now()
        with self.core.database.write() as session:
            if error is None:
                _mark_done(session, job, now)
                return
            row = session.get(JobRow, job.id)
            if row is None or row.locked_by != job.locked_by:
                return  # our lease expired and someone else took it over
            row.locked_by = None
            row.locked_until = None
            if row.attempts >= row.max_attempts:
                row.status = "failed"
                row.finished_at = now
                row.last_error = error
            else:
                row.status = "queued"
                row.run_at = now + backoff(row.attempts)
                row.last_error = error

    def run_until_idle(self, max_jobs: int = 1000) -> int:
        """Run due jobs until none is due (bounded by max_jobs); returns how many ran."""
        count = 0
        while count < max_jobs and self.run_once():
            count += 1
        return count

    def serve_forever(
        self,
        poll_seconds: float = 0.5,
        periodic: Callable[[], None] | None = None,
        defer: Callable[[], bool] | None = None,
    ) -> None:
        """Loop until stop(): run due jobs; call `periodic` (recurring work) between polls.

        While `defer()` is true another process is better placed to run the jobs (it is less
        busy), and this runner leaves them to it, for MAX_DEFERRED_POLLS polls in a row at most:
        then it runs them itself, in case nobody else did.
        """
        deferred = 0
        while not self._stop.is_set():
            ran = 0
            try:
                if periodic is not None:
                    periodic()
                if defer is not None and deferred < MAX_DEFERRED_POLLS and defer():
                    deferred += 1
                else:
                    deferred = 0
                    ran = self.run_until_idle(max_jobs=100)
            except Exception:
                log.exception("job runner loop error")
            if not ran:
                self._stop.wait(poll_seconds)

    def stop(self) -> None:
        self._stop.set()


def purge_finished(session: Session, older_than: datetime) -> int:
    """Delete done jobs finished before `older_than` (failed ones stay for the operator)."""
    from sqlalchemy import delete

    result = session.execute(
        delete(JobRow).where(JobRow.status == "done", JobRow.finished_at < older_than)
    )
    return result.rowcount or 0  # type: ignore[attr-defined]
