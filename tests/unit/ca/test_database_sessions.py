"""Database.autocommit(): each statement commits on its own on PostgreSQL (no BEGIN/COMMIT round
trips); on SQLite, whose writers queue at BEGIN IMMEDIATE, it is an ordinary write transaction."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from ca import jobs
from ca.storage import Database
from ca.storage.models import JobRow

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def _queued(database: Database) -> int:
    with database.read() as session:
        return session.scalar(select(func.count()).where(JobRow.kind == "t_auto")) or 0


def test_autocommit_commits_each_statement_on_postgresql_only(database: Database):
    seen_inside = -1
    with pytest.raises(RuntimeError), database.autocommit() as session:
        jobs.enqueue(session, "t_auto", {}, run_at=NOW)
        seen_inside = _queued(database)
        raise RuntimeError("after the first statement")
    if database.is_sqlite:
        # One transaction: invisible to others until it ends, and rolled back by the error.
        assert (seen_inside, _queued(database)) == (0, 0)
    else:
        # Committed by itself: seen at once, and kept whatever happens after it.
        assert (seen_inside, _queued(database)) == (1, 1)


def test_autocommit_work_that_succeeds_is_kept_on_both(database: Database):
    with database.autocommit() as session:
        jobs.enqueue(session, "t_auto", {}, run_at=NOW)
        jobs.enqueue(session, "t_auto", {}, run_at=NOW)
    assert _queued(database) == 2
