"""Shared fixtures: a real database per test on SQLite and on PostgreSQL.

PostgreSQL (127.0.0.1:5432, trust auth) gets one migrated template database per test process and
a fresh copy of it per test (CREATE DATABASE … TEMPLATE is much faster than migrating each time).
Set PRIVCA_TEST_PG_URL to point elsewhere; PRIVCA_TEST_SKIP_PG=1 skips PostgreSQL cases locally
(CI never sets it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ca.storage import Database

PG_ADMIN_URL = os.environ.get("PRIVCA_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def _pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    if os.environ.get("PRIVCA_TEST_SKIP_PG") == "1":
        pytest.skip("PostgreSQL cases skipped by PRIVCA_TEST_SKIP_PG")
    name = f"privca_tpl_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    database = Database(_pg_url(name))
    database.upgrade()
    database.dispose()
    yield name
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def copy_of_template(template: str) -> Iterator[str]:
    """URL of a new PostgreSQL database copied from the migrated template, dropped afterwards."""
    name = f"privca_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        try:
            yield _pg_url(name)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def module_database(request: pytest.FixtureRequest, directory: Path) -> Iterator[str]:
    """For a fixture parametrised with "sqlite" and "postgresql" (typically module-scoped, where
    the function-scoped `database_url` cannot serve): the URL of a migrated, empty database."""
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'privca.db'}"
        database = Database(url)
        database.upgrade()
        database.dispose()
        yield url
        return
    with copy_of_template(request.getfixturevalue("_pg_template")) as url:
        yield url


@pytest.fixture
def pg_database_url(_pg_template: str) -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database that is dropped after the test."""
    with copy_of_template(_pg_template) as url:
        yield url


@pytest.fixture
def sqlite_database_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'privca.db'}"
    database = Database(url)
    database.upgrade()
    database.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database: the test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_database_url")
    return request.getfixturevalue("pg_database_url")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()
