"""Structured logs: one JSON object per line with the request id, never a secret.

Callers pass context with `extra={...}`; the formatter keeps those fields. Nothing here logs
request bodies or headers, so PINs, tokens and keys cannot reach the log through it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "info", json_format: bool = True) -> None:
    """Route privca's loggers to stderr, as JSON lines unless `json_format` is false."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JSONFormatter()
        if json_format
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger = logging.getLogger("privca")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
