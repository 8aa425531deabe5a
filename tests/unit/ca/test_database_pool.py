"""Pooled PostgreSQL connections: no round trip to check out one that was just used, and one that
died while idle (a database restart, a failover) is replaced before anybody uses it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

import ca.storage
from ca.storage import Database
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def database(pg_database_url: str) -> Iterator[Database]:
    database = Database(pg_database_url, pool_size=1)
    yield database
    database.dispose()


def backend_pid(database: Database) -> int:
    with database.read() as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(pid: int) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        admin.dispose()


def test_a_connection_that_died_while_idle_is_replaced_unnoticed(
    database: Database, monkeypatch: pytest.MonkeyPatch
):
    first = backend_pid(database)
    terminate(first)
    monkeypatch.setattr(ca.storage, "PING_AFTER_IDLE_SECONDS", 0.0)
    second = backend_pid(database)
    assert second != first


def test_a_connection_checked_in_a_moment_ago_is_not_pinged(
    database: Database, monkeypatch: pytest.MonkeyPatch
):
    # The other side of the bargain: a connection used a moment ago is trusted, so one killed
    # in that moment fails the next transaction (which the caller's error handling sees once).
    monkeypatch.setattr(ca.storage, "PING_AFTER_IDLE_SECONDS", 3600.0)
    first = backend_pid(database)
    terminate(first)
    with pytest.raises(OperationalError):
        backend_pid(database)
    assert backend_pid(database) != first  # the pool dropped the dead one


def test_sessions_carry_the_configured_lock_and_idle_in_transaction_limits(pg_database_url: str):
    from ca.config import DatabaseTimeouts

    database = Database(
        pg_database_url, timeouts=DatabaseTimeouts(lock_seconds=2, idle_in_transaction_seconds=7)
    )
    try:
        with database.read() as session:
            assert session.execute(text("SHOW lock_timeout")).scalar_one() == "2s"
            assert (
                session.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one()
                == "7s"
            )
    finally:
        database.dispose()


def test_a_writer_stuck_behind_a_row_lock_fails_after_the_lock_timeout(pg_database_url: str):
    # A node paused inside a transaction must not hang everybody else's requests for good.
    from ca.config import DatabaseTimeouts

    database = Database(pg_database_url, timeouts=DatabaseTimeouts(lock_seconds=1))
    try:
        with database.write() as session:
            session.execute(text("CREATE TABLE IF NOT EXISTS lock_probe (id INT PRIMARY KEY)"))
            session.execute(text("INSERT INTO lock_probe VALUES (1) ON CONFLICT DO NOTHING"))
        with database.write() as holder:
            holder.execute(text("SELECT id FROM lock_probe WHERE id = 1 FOR UPDATE"))
            with pytest.raises(OperationalError, match="lock timeout"):
                with database.write() as waiter:
                    waiter.execute(text("SELECT id FROM lock_probe WHERE id = 1 FOR UPDATE"))
    finally:
        database.dispose()


def test_zero_turns_a_limit_off(pg_database_url: str):
    from ca.config import DatabaseTimeouts

    database = Database(
        pg_database_url, timeouts=DatabaseTimeouts(lock_seconds=0, idle_in_transaction_seconds=0)
    )
    try:
        with database.read() as session:
            assert session.execute(text("SHOW lock_timeout")).scalar_one() == "0"
    finally:
        database.dispose()
