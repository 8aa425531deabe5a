"""CRLs (RFC 5280 §5): being built under issue 5; `install(core)` wires jobs and listeners."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ca.core import CACore


def install(core: CACore) -> None:
    """Register CRL jobs and revocation listeners on the core (none yet)."""
