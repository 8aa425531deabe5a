"""Integration fixtures: a real SoftHSM token and a real `privca serve` per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.hsm_fixtures import softhsm_token  # noqa: F401 - fixture
from tests.integration.server import RunningServer, start_server


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[RunningServer]:
    """A running server on this test's database (SQLite and PostgreSQL via `database_url`)."""
    running = start_server(tmp_path, database_url)
    yield running
    running.stop()
