"""The core's recurring work as jobs: audit checkpoints, abandoned pending rows, old job rows.

`schedule_recurring()` runs between job polls in every runner; it enqueues each recurring job
with a unique key, so however many processes call it, one job of a kind is queued at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from ca import audit, jobs
from ca.storage.models import CertificateRow

if TYPE_CHECKING:
    from ca.config import Config
    from ca.core import CACore

log = logging.getLogger("privca.maintenance")

# A pending row older than this never finished (the process died between reserve and commit).
PENDING_ABANDONED_AFTER = timedelta(minutes=10)
SCHEDULE_EVERY = timedelta(seconds=30)


def audit_checkpoint(core: CACore, job: jobs.Job) -> None:
    signer = core.keystore.find_signer(core.config.audit.key_label)
    audit.write_checkpoint(core.database, signer)


def abandon_pending(core: CACore, job: jobs.Job) -> None:
    """Mark stale pending rows failed, audited: no certificate was ever handed out for them."""
    cutoff = core.now() - PENDING_ABANDONED_AFTER
    with core.database.write() as session:
        rows = list(
            session.scalars(
                select(CertificateRow)
                .where(CertificateRow.status == "pending", CertificateRow.created_at < cutoff)
                .limit(1000)
            )
        )
        for row in rows:
            row.status = "failed"
            row.status_changed_at = core.now()
            core.audit(
                session,
                actor="privca",
                channel="job",
                action="issuance_abandoned",
                object=f"certificate:{row.issuer_id}:{row.serial}",
                details={"serial": row.serial, "created_at": row.created_at.isoformat()},
            )


def purge_jobs(core: CACore, job: jobs.Job) -> None:
    with core.database.write() as session:
        jobs.purge_finished(session, core.now() - timedelta(days=7))


CORE_HANDLERS: dict[str, jobs.Handler] = {
    "audit_checkpoint": audit_checkpoint,
    "abandon_pending": abandon_pending,
    "purge_jobs": purge_jobs,
}


def core_recurring(config: Config) -> dict[str, timedelta]:
    return {
        "audit_checkpoint": timedelta(seconds=config.audit.checkpoint_interval),
        "abandon_pending": timedelta(minutes=5),
        "purge_jobs": timedelta(hours=6),
    }


class RecurringSchedule:
    """Enqueues recurring jobs when due; cheap to call often (checks at most every 30 s)."""

    def __init__(self, core: CACore) -> None:
        self.core = core
        self.intervals = core.recurring_jobs
        self._next_check: datetime | None = None

    def __call__(self) -> None:
        now = self.core.now()
        if self._next_check is not None and now < self._next_check:
            return
        self._next_check = now + SCHEDULE_EVERY
        with self.core.database.write() as session:
            for kind, interval in self.intervals.items():
                jobs.enqueue(
                    session, kind, {}, run_at=now + interval, unique_key=f"recurring:{kind}"
                )
            if audit.checkpoint_due(
                self.core.database,
                every=self.core.config.audit.checkpoint_every,
                interval_seconds=self.core.config.audit.checkpoint_interval,
            ):
                jobs.enqueue(
                    session,
                    "audit_checkpoint",
                    {},
                    run_at=now,
                    unique_key="recurring:audit_checkpoint",
                )


def start_job_thread(
    core: CACore, poll_seconds: float = 0.5, defer: Callable[[], bool] | None = None
) -> jobs.JobRunner:
    """A daemon thread running this process's job runner; stop it with runner.stop().

    `defer`: see JobRunner.serve_forever (a served worker defers to a less busy one)."""
    runner = jobs.JobRunner(core, core.job_handlers)
    schedule = RecurringSchedule(core)
    thread = threading.Thread(
        target=runner.serve_forever,
        args=(poll_seconds, schedule, defer),
        name="privca-jobs",
        daemon=True,
    )
    thread.start()
    return runner
