"""A real SoftHSM token per test, in the test's own directory, with random PINs.

SoftHSM reads SOFTHSM2_CONF only in C_Initialize and keeps one library state per process, so a
token in a new directory is invisible until the library is initialised again.
`make_softhsm_token` goes through `hsm.softhsm.ensure_softhsm_token`, which points
SOFTHSM2_CONF at the new directory; hsm initialises the process's SoftHSM again on its next use
whenever SOFTHSM2_CONF differs from the value it was initialised with, so every test can use the
same token label in its own directory, and `Token` handles of earlier tests simply fail to find
their (deleted) tokens. The `softhsm_token` fixture restores SOFTHSM2_CONF after the test. This
keeps every test's token apart, also under pytest-xdist (one process per worker).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsm import Token, find_module
from hsm.softhsm import ensure_softhsm_token


@dataclass(frozen=True)
class SoftHSMToken:
    module_path: str
    conf_path: Path
    label: str
    pin: str
    so_pin: str

    def token(self) -> Token:
        """A new handle on the token, logging in with the user PIN."""
        pin = self.pin
        return Token(self.module_path, self.label, lambda: pin)

    def __repr__(self) -> str:
        return f"SoftHSMToken(label={self.label!r}, conf={str(self.conf_path)!r})"


def make_softhsm_token(directory: Path, label: str = "privca") -> SoftHSMToken:
    """Create (or reuse) a SoftHSM token `label` under `directory` with fresh random PINs.

    Sets SOFTHSM2_CONF in os.environ; callers that care restore it (the fixture does).
    """
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    conf = ensure_softhsm_token(directory / "softhsm", label, pin, so_pin)
    return SoftHSMToken(find_module(), conf, label, pin, so_pin)


@pytest.fixture
def softhsm_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHSMToken]:
    """A fresh SoftHSM token for this test only."""
    # Recorded by monkeypatch first, so SOFTHSM2_CONF is restored after the test.
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
    yield make_softhsm_token(tmp_path)
