"""This front end's tables and migrations (placeholder until its issue lands)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData

from ca.storage import MigrationSet

MIGRATIONS = MigrationSet(Path(__file__).parent / "migrations", MetaData(), "privca_acme_version")
