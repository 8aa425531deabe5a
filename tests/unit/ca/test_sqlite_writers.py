"""The SQLite writer gate: writers of one file queue across threads and processes, every
transaction's end (commit, rollback, failed BEGIN, close) lets the next one in, and a writer that
waits too long gets SQLite's own "database is locked"."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from ca.storage import Database
from ca.storage.sqlite_writers import writer_gate


def increment_schema(database: Database) -> None:
    with database.write() as session:
        session.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER)"))
        session.execute(text("INSERT INTO counter VALUES (1, 0)"))


@pytest.fixture
def database(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'gate.db'}")
    increment_schema(database)
    yield database
    database.dispose()


def increment(database: Database, times: int) -> None:
    # Read-modify-write: a lost update would show if two writers ever overlapped.
    for _ in range(times):
        with database.write() as session:
            value = session.execute(text("SELECT value FROM counter WHERE id = 1")).scalar_one()
            session.execute(text("UPDATE counter SET value = :v WHERE id = 1"), {"v": value + 1})


def _increment_in_child(url: str, threads: int, times: int) -> None:
    database = Database(url)
    workers = [threading.Thread(target=increment, args=(database, times)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    database.dispose()


def counter(database: Database) -> int:
    with database.read() as session:
        return int(session.execute(text("SELECT value FROM counter")).scalar_one())


def test_writers_of_two_processes_and_their_threads_lose_no_update(database: Database):
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_increment_in_child, args=(database.url, 3, 40)) for _ in range(2)
    ]
    for child in children:
        child.start()
    increment(database, 40)
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    assert counter(database) == 2 * 3 * 40 + 40


def test_the_lock_file_is_private(database: Database, tmp_path: Path):
    increment(database, 1)
    mode = stat.S_IMODE(os.stat(tmp_path / "gate.db-writers").st_mode)
    assert mode == 0o600


def test_a_rolled_back_transaction_lets_the_next_writer_in(database: Database):
    with pytest.raises(RuntimeError), database.write() as session:
        session.execute(text("UPDATE counter SET value = 99"))
        raise RuntimeError("the caller failed mid-transaction")
    increment(database, 1)  # would wait the full gate timeout if the gate were still held
    assert counter(database) == 1


def _hold_gate(path: str, held: multiprocessing.Event, release: multiprocessing.Event) -> None:
    gate = writer_gate(path)
    gate.enter()
    held.set()
    release.wait(60)
    gate.leave()


def test_a_writer_held_up_past_the_timeout_gets_database_is_locked(
    database: Database, tmp_path: Path
):
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_gate, args=(str(tmp_path / "gate.db"), held, release))
    holder.start()
    try:
        assert held.wait(60)
        gate = writer_gate(str(tmp_path / "gate.db"))
        with pytest.raises(Exception, match="database is locked"):
            gate.enter(timeout=0.2)
        # The thread lock was given back: the writer that comes after the holder gets in.
        release.set()
        holder.join(60)
        increment(database, 1)
        assert counter(database) == 1
    finally:
        release.set()
        holder.join(60)


def test_a_failed_begin_leaves_the_gate(tmp_path: Path):
    # A writer outside the gate (the sqlite3 shell, say) holds SQLite's own lock: our BEGIN
    # IMMEDIATE passes the gate, then times out in SQLite, and must not keep the gate.
    path = tmp_path / "gate.db"
    database = Database(f"sqlite:///{path}")
    try:
        increment_schema(database)

        @event.listens_for(database._write_engine, "connect")
        def short_busy_timeout(dbapi_connection, _record) -> None:
            dbapi_connection.execute("PRAGMA busy_timeout=100")

        database._write_engine.dispose()  # new connections, with the short timeout
        outsider = sqlite3.connect(path, isolation_level=None)
        outsider.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="database is locked"):
            increment(database, 1)
        assert not writer_gate(str(path))._threads.locked()
        outsider.execute("ROLLBACK")
        outsider.close()
        increment(database, 1)
        assert counter(database) == 1
    finally:
        database.dispose()
