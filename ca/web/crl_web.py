"""CRL endpoints (being built under issue 5)."""

from __future__ import annotations

from flask import Flask

from ca.core import CACore


def init_app(app: Flask, core: CACore) -> None:
    """Mount the CRL endpoints (none yet)."""
