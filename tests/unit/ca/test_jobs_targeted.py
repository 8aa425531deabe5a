"""Jobs written already leased to the process that runs them right after the commit, jobs run by
id, and jobs that a handler completes in its own transaction."""

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


def enqueue(core, kind: str, payload: dict, run_at) -> int:
    with core.database.write() as session:
        assert jobs.enqueue(session, kind, payload, run_at=run_at)
    return max(rows(core))


def test_a_leased_job_is_run_by_its_holder_and_by_no_runner_before_its_lease_ends(core, clock):
    ran: list[str] = []
    with core.database.write() as session:
        job = jobs.enqueue_leased(session, "t_a", {"n": 1}, now=clock.now, holder="waker")
    assert (job.attempts, job.locked_by, job.payload) == (1, "waker", {"n": 1})
    runner = jobs.JobRunner(core, {"t_a": lambda _c, j: ran.append(j.locked_by)})
    assert not runner.run_once()  # leased: not due for any runner
    runner.run_claimed(job)
    row = rows(core)[job.id]
    assert ran == ["waker"] and (row.status, row.locked_by, row.attempts) == ("done", None, 1)


def test_a_leased_job_whose_holder_died_is_taken_over_when_its_lease_ends(core, clock):
    with core.database.write() as session:
        job = jobs.enqueue_leased(session, "t_a", {}, now=clock.now, holder="died")
    runner = jobs.JobRunner(core, {"t_a": lambda _c, j: None})
    clock.now += jobs.LEASE + timedelta(seconds=1)
    assert runner.run_once()
    row = rows(core)[job.id]
    assert (row.status, row.attempts) == ("done", 2)


def test_a_failed_leased_job_goes_back_to_the_queue_with_backoff(core, clock):
    def fail(_core, _job):
        raise jobs.RetryLater("the peer did not answer")

    with core.database.write() as session:
        job = jobs.enqueue_leased(session, "t_a", {}, now=clock.now, holder="waker")
    jobs.JobRunner(core, {"t_a": fail}).run_claimed(job)
    row = rows(core)[job.id]
    assert (row.status, row.locked_by, row.attempts) == ("queued", None, 1)
    assert row.run_at > clock.now and "did not answer" in row.last_error


def test_run_once_with_an_id_runs_only_that_job_and_only_when_due(core, clock):
    ran: list[int] = []
    older = enqueue(core, "t_b", {"n": 1}, clock.now)
    wanted = enqueue(core, "t_b", {"n": 2}, clock.now)
    later = enqueue(core, "t_b", {"n": 3}, clock.now + timedelta(hours=1))
    runner = jobs.JobRunner(core, {"t_b": lambda _c, job: ran.append(job.payload["n"])})
    assert runner.run_once(wanted)
    assert ran == [2]
    assert not runner.run_once(wanted)  # done now
    assert not runner.run_once(later)  # not due yet
    assert ran == [2]
    status = {i: r.status for i, r in rows(core).items()}
    assert status == {older: "queued", wanted: "done", later: "queued"}


def test_a_handler_can_complete_its_job_in_its_own_transaction(core, clock):
    job_id = enqueue(core, "t_c", {}, clock.now)
    other = enqueue(core, "t_c", {"rollback": True}, clock.now)

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
    job_id = enqueue(core, "t_d", {}, clock.now)
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
