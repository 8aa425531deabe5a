"""Persisted jobs (retries, backoff, leases, concurrent runners) and admin API tokens."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ca import api_tokens, jobs
from ca.errors import BadRequest, Forbidden, NotFound, Unauthorized
from ca.storage.models import APITokenRow, JobRow
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


def job_rows(core) -> list[JobRow]:
    with core.database.read() as session:
        return list(
            session.scalars(select(JobRow).where(JobRow.kind.like("t_%")).order_by(JobRow.id))
        )


def test_enqueue_debounces_by_unique_key(core, clock):
    with core.database.write() as session:
        assert jobs.enqueue(session, "t_x", {"a": 1}, run_at=clock.now, unique_key="k")
        assert not jobs.enqueue(session, "t_x", {"a": 2}, run_at=clock.now, unique_key="k")
        assert jobs.enqueue(session, "t_x", {"a": 3}, run_at=clock.now, unique_key="other")
    assert len(job_rows(core)) == 2


def test_a_failing_job_is_retried_with_backoff_then_marked_failed(core, clock):
    calls = []

    def flaky(_core, job):
        calls.append(job.attempts)
        raise jobs.RetryLater("not yet")

    runner = jobs.JobRunner(core, {"t_flaky": flaky})
    with core.database.write() as session:
        jobs.enqueue(session, "t_flaky", {}, run_at=clock.now, max_attempts=3)
    assert runner.run_once()
    row = job_rows(core)[0]
    assert (row.status, row.attempts) == ("queued", 1)
    assert row.run_at - clock.now == jobs.backoff(1)
    assert not runner.run_once()  # not due yet
    for _ in range(2):
        clock.now += timedelta(hours=2)
        assert runner.run_once()
    row = job_rows(core)[0]
    assert (row.status, row.attempts) == ("failed", 3) and "not yet" in row.last_error
    assert calls == [1, 2, 3]


def test_a_job_whose_lease_expired_is_taken_over(core, clock):
    with core.database.write() as session:
        jobs.enqueue(session, "t_slow", {}, run_at=clock.now)
    first = jobs.JobRunner(core, {"t_slow": lambda c, j: None})
    claimed = first.claim()
    assert claimed is not None
    second = jobs.JobRunner(core, {"t_slow": lambda c, j: None})
    second.worker_id = "other"
    assert second.claim() is None
    clock.now += jobs.LEASE + timedelta(seconds=1)
    assert second.claim() is not None


def test_concurrent_runners_never_run_a_job_twice(core, clock):
    with core.database.write() as session:
        for i in range(40):
            jobs.enqueue(session, "t_count", {"i": i}, run_at=clock.now)
    seen: list[int] = []
    lock = threading.Lock()

    def handler(_core, job):
        with lock:
            seen.append(job.payload["i"])

    runners = [jobs.JobRunner(core, {"t_count": handler}) for _ in range(4)]
    for number, runner in enumerate(runners):
        runner.worker_id = f"runner-{number}"
    threads = [threading.Thread(target=r.run_until_idle, kwargs={"max_jobs": 100}) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(seen) == list(range(40))
    assert {row.status for row in job_rows(core)} == {"done"}


def test_tokens_are_stored_hashed_and_checked_for_scope(core, clock):
    with core.database.write() as session:
        token, info = api_tokens.create_token(session, "ops", frozenset({"read"}), clock.now)
    assert token.startswith("pca_") and len(token) > 40
    with core.database.read() as session:
        stored = session.scalars(select(APITokenRow)).one()
        assert token not in (stored.token_sha256, stored.name, stored.scopes)
    with core.database.write() as session:
        assert api_tokens.authenticate(session, token, "read", clock.now).name == "ops"
        with pytest.raises(Forbidden):
            api_tokens.authenticate(session, token, "issue", clock.now)
        for bad in (None, "", "pca_wrong", token + "x", "Bearer " + token):
            with pytest.raises(Unauthorized):
                api_tokens.authenticate(session, bad, "read", clock.now)
        api_tokens.revoke_token(session, info.id)
    with core.database.write() as session, pytest.raises(Unauthorized):
        api_tokens.authenticate(session, token, "read", clock.now)
    with core.database.write() as session, pytest.raises(NotFound):
        api_tokens.revoke_token(session, 999)


def test_admin_scope_allows_everything_and_scope_names_are_checked():
    assert api_tokens.parse_scopes("read,issue") == frozenset({"read", "issue"})
    with pytest.raises(BadRequest):
        api_tokens.parse_scopes("read,root")
    with pytest.raises(BadRequest):
        api_tokens.parse_scopes("")


def test_no_token_rows_are_written_by_failed_authentication(core, clock):
    with core.database.write() as session:
        with pytest.raises(Unauthorized):
            api_tokens.authenticate(session, "pca_nothing", "read", clock.now)
    with core.database.read() as session:
        assert session.scalar(select(func.count()).select_from(APITokenRow)) == 0


def _polls_before_the_job_ran(core, clock, defer_answer: bool) -> int:
    """Serve one due job with a runner whose `defer()` always answers `defer_answer`; how many
    times the runner asked it before running the job."""
    with core.database.write() as session:
        jobs.enqueue(session, "t_deferrable", {}, run_at=clock.now)
    asked: list[int] = []
    ran_after: list[int] = []
    ran = threading.Event()

    def handler(_core, _job) -> None:
        ran_after.append(len(asked))
        ran.set()

    def defer() -> bool:
        asked.append(1)
        return defer_answer

    runner = jobs.JobRunner(core, {"t_deferrable": handler})
    thread = threading.Thread(target=runner.serve_forever, args=(0.01, None, defer))
    thread.start()
    try:
        assert ran.wait(30)
    finally:
        runner.stop()
        thread.join(30)
    assert [row.status for row in job_rows(core)] == ["done"]
    return ran_after[0]


def test_a_runner_that_defers_to_a_less_busy_process_still_runs_jobs_in_the_end(core, clock):
    # Always told another process is less busy (and that one never takes the job): it leaves
    # the job MAX_DEFERRED_POLLS polls in a row, then runs it without asking again.
    assert _polls_before_the_job_ran(core, clock, True) == jobs.MAX_DEFERRED_POLLS


def test_a_runner_not_asked_to_defer_runs_due_jobs_at_once(core, clock):
    assert _polls_before_the_job_ran(core, clock, False) == 1
