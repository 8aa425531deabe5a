"""Mounts this front end on the app (placeholder until its issue lands)."""

from __future__ import annotations

from typing import Any


def init_app(app: Any, core: Any) -> None:
    """Nothing mounted yet."""
