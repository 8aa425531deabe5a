"""Database access: engines, sessions and the few dialect differences (known only here).

SQLite runs in WAL mode and takes its write lock at BEGIN (BEGIN IMMEDIATE), so two writers never
deadlock on a lock upgrade; writers queue at a gate of our own first (ca.storage.sqlite_writers),
which wakes the next one as soon as the lock is free. PostgreSQL gets `FOR UPDATE SKIP LOCKED` for
job claims.
Repository functions elsewhere take a Session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, Select, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from ca.config import DatabaseTimeouts
from ca.storage.sqlite_writers import GatedConnection, writer_gate

if TYPE_CHECKING:
    from ca.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATIONS_GROUP = "privca.migrations"


@dataclass(frozen=True)
class MigrationSet:
    """One package's migrations: its versions folder, its metadata, its own version table."""

    versions_dir: Path
    metadata: MetaData
    version_table: str


class Database:
    """Engines and session factories for one database URL, created per process (after fork)."""

    def __init__(
        self, url: str, *, pool_size: int = 10, timeouts: DatabaseTimeouts | None = None
    ) -> None:
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                # The database holds the inventory, the audit log and front ends' secrets
                # (EAB keys, password hashes): create it private, whatever the umask.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            self.engine = _sqlite_engine(url)
            self._write_engine = _sqlite_engine(url, writers=path or None)
        else:
            url = _with_driver(url)
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size)
            _ping_after_idle(self.engine)
            _session_limits(self.engine, timeouts or DatabaseTimeouts())
            self._write_engine = self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)

    @classmethod
    def from_config(cls, config: Config) -> Database:
        return cls(config.database_url, timeouts=config.database_timeouts)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one transaction that commits on success and rolls back on any error."""
        with self._write() as session, session.begin():
            yield session

    @contextmanager
    def autocommit(self) -> Iterator[Session]:
        """A session whose statements each commit on their own, with no BEGIN and no COMMIT
        round trip: for work made of single statements that are each safe alone (a request
        that only reads once its nonce is spent, say). On SQLite, whose writers must queue at
        BEGIN IMMEDIATE, it is `write()`."""
        if self.is_sqlite:
            with self.write() as session:
                yield session
            return
        with self._write_engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            with Session(bind=connection) as session:
                yield session

    def write_connection(self) -> Connection:
        """A connection of the writing engine for a caller that keeps it across transactions
        (ca.storage.group_commit); it takes SQLite's write lock at each BEGIN like `write()`."""
        return self._write_engine.connect()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only; its transaction is rolled back at the end."""
        with self._read() as session:
            yield session

    def for_update(self, statement: Select[Any], *, skip_locked: bool = False) -> Select[Any]:
        """Row locks where the engine has them (SQLite's BEGIN IMMEDIATE serialises writers)."""
        if self.is_sqlite:
            return statement
        return statement.with_for_update(skip_locked=skip_locked)

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def upgrade(self) -> None:
        """Bring the core's schema, then each front end's, to its newest migration (idempotent).

        A front end declares its own migrations under the `privca.migrations` entry-point group
        as a `MigrationSet`; each set has its own Alembic version table, so the core and the
        front ends evolve their tables independently.
        """
        from alembic import command
        from alembic.config import Config as AlembicConfig

        from ca.storage.models import Base

        sets = [MigrationSet(MIGRATIONS_DIR / "versions", Base.metadata, "privca_core_version")]
        sets += [
            ep.load() for ep in sorted(entry_points(group=MIGRATIONS_GROUP), key=lambda ep: ep.name)
        ]
        for migration_set in sets:
            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.set_main_option("path_separator", "os")
            config.set_main_option("version_locations", str(migration_set.versions_dir))
            config.attributes["engine"] = self._write_engine
            config.attributes["metadata"] = migration_set.metadata
            config.attributes["version_table"] = migration_set.version_table
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
        if self._write_engine is not self.engine:
            self._write_engine.dispose()


# A pooled connection checked in less than this long ago worked a moment ago: checking it out
# again needs no round trip. SQLAlchemy's pool_pre_ping pings on every checkout, one extra round
# trip per transaction on a busy server. One that idled longer (across a database restart, a
# failover, a proxy's idle timeout) is pinged, and a dead one replaced before anyone uses it.
PING_AFTER_IDLE_SECONDS = 2.0


def _ping_after_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop("checked_in", None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out another (a new one if need be).
            raise DisconnectionError("a pooled connection went away while idle") from exc


def _session_limits(engine: Engine, timeouts: DatabaseTimeouts) -> None:
    # SET on each new connection rather than startup `options`, which PgBouncer refuses.
    settings = []
    if timeouts.lock_seconds:
        settings.append(f"SET lock_timeout = '{int(timeouts.lock_seconds)}s'")
    if timeouts.idle_in_transaction_seconds:
        seconds = int(timeouts.idle_in_transaction_seconds)
        settings.append(f"SET idle_in_transaction_session_timeout = '{seconds}s'")
    if not settings:
        return

    @event.listens_for(engine, "connect")
    def limit_session(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            for statement in settings:
                cursor.execute(statement)
        dbapi_connection.commit()


def _with_driver(url: str) -> str:
    # psycopg 3 is the driver we install; a bare postgresql:// would ask for psycopg2.
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _sqlite_engine(url: str, *, writers: str | None = None) -> Engine:
    """An engine for reads, or with `writers` (the database path) one whose transactions write:
    they pass the writer gate of that file, then take SQLite's write lock at BEGIN."""
    connect_args: dict[str, Any] = {"timeout": 30, "check_same_thread": False}
    gated = writers is not None and writers != ":memory:"
    if gated:
        connect_args["factory"] = GatedConnection
    engine = create_engine(url, connect_args=connect_args)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (pysqlite quirk).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()
        if gated:
            dbapi_connection.join_gate(writer_gate(str(writers)))

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if writers is None:
            connection.exec_driver_sql("BEGIN")
            return
        dbapi_connection = connection.connection.dbapi_connection
        if gated:
            dbapi_connection.enter_gate()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if gated:
                dbapi_connection.leave_gate()
            raise

    return engine
