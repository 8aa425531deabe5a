"""This front end's `privca` subcommands (placeholder until its issue lands)."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """No subcommands yet."""
