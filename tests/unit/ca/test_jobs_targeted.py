"""Jobs run by id (a front end waking a runner for the job it just queued) and jobs that a handler
completes in its own transaction."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from ca import jobs
from ca.storage.models import JobRow
from tests.support.clock import Clock
from tests.support.core_factory import make_core
from tests.support.software_keystore import SoftwareKeyStore


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core(tmp_path, database_url, clock):
    core = make_core(tmp_path, database_url, SoftwareKeyStore(), clock=clock)
    yield core
    core.close()


def rows(core) -> dict[int, JobRow]:
    with core.database.read() as session:
        return {r.id: r for r in session.scalars(select(JobRow).where(JobRow.kind.like("t_%")))}


def test_enqueue_returning_id_gives_the_new_job_and_none_when_debounced(core, clock):
    with core.database.write() as session:
        first = jobs.enqueue_returning_id(
            session, "t_a", {"n": 1}, run_at=clock.now, unique_key="u"
        )
        again = jobs.enqueue_returning_id(
            session, "t_a", {"n": 2}, run_at=clock.now, unique_key="u"
        )
    assert isinstance(first, int) and again is None
    assert list(rows(core)) == [first]
    assert rows(core)[first].payload == '{"n": 1}'


def test_run_once_with_an_id_runs_only_that_job_and_only_when_due(core, clock):
    ran: list[int] = []
    with core.database.write() as session:
        older = jobs.enqueue_returning_id(session, "t_b", {"n": 1}, run_at=clock.now)
        wanted = jobs.enqueue_returning_id(session, "t_b", {"n": 2}, run_at=clock.now)
        later = jobs.enqueue_returning_id(
            session, "t_b", {"n": 3}, run_at=clock.now + timedelta(hours=1)
        )
    assert older and wanted and later
    runner = jobs.JobRunner(core, {"t_b": lambda _c, job: ran.append(job.payload["n"])})
    assert runner.run_once(wanted)
    assert ran == [2]
    assert not runner.run_once(wanted)  # done now
    assert not runner.run_once(later)  # not due yet
    assert ran == [2]
    status = {i: r.status for i, r in rows(core).items()}
    assert status == {older: "queued", wanted: "done", later: "queued"}


def test_a_handler_can_complete_its_job_in_its_own_transaction(core, clock):
    with core.database.write() as session:
        job_id = jobs.enqueue_returning_id(session, "t_c", {}, run_at=clock.now)
        other = jobs.enqueue_returning_id(session, "t_c", {"rollback": True}, run_at=clock.now)

    def handler(_core, job):
        with core.database.write() as session:
            assert jobs.complete(session, job, clock.now)
            if job.payload.get("rollback"):
                raise RuntimeError("the handler's transaction failed")
        return jobs.COMPLETED

    runner = jobs.JobRunner(core, {"t_c": handler})
    assert runner.run_once(job_id)
    row = rows(core)[job_id]
    assert (row.status, row.locked_by, row.finished_at is not None) == ("done", None, True)
    # A failed transaction takes the completion with it: the job is retried as usual.
    assert runner.run_once(other)
    row = rows(core)[other]
    assert (row.status, row.attempts) == ("queued", 1) and "failed" in row.last_error


def test_complete_changes_nothing_once_the_lease_was_taken_over(core, clock):
    with core.database.write() as session:
        job_id = jobs.enqueue_returning_id(session, "t_d", {}, run_at=clock.now)
    first = jobs.JobRunner(core, {"t_d": lambda c, j: None})
    claimed = first.claim(job_id)
    assert claimed is not None and claimed.locked_by == first.worker_id
    clock.now += jobs.LEASE + timedelta(seconds=1)
    second = jobs.JobRunner(core, {"t_d": lambda c, j: None})
    second.worker_id = "other"
    assert second.claim(job_id) is not None
    with core.database.write() as session:
        assert not jobs.complete(session, claimed, clock.now)
    assert rows(core)[job_id].status == "running"
    assert rows(core)[job_id].locked_by == "other"
