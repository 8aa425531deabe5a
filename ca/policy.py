"""The policy engine shared by every channel (being written: see issue 2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PolicyRules:
    max_validity_days: int | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], path: str) -> PolicyRules:
        return cls(max_validity_days=raw.get("max_validity_days"))
