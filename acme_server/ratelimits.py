"""Rate limits kept in the database, so they hold across workers and nodes.

Each countable thing is an event row (limit, key, time); a limit is "at most `count` events for
this key within `period`". Exceeding one raises `rateLimited` with a Retry-After when the oldest
counted event leaves the window. Old events are purged by a recurring job.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from acme_server.problems import ACMEProblem
from acme_server.storage import RateEventRow
from ca.storage.bulk import fetch_rows, insert_many

if TYPE_CHECKING:
    from acme_server.settings import RateLimitSettings
    from ca.metrics import Metrics

_DESCRIPTIONS = {
    "new_orders_per_account": "new orders for this account",
    "certificates_per_name": "certificates for {key}",
    "failed_validations": "failed validations for {key}",
    "new_accounts_per_ip": "new accounts from {key}",
}
# Built once, and run below SQLAlchemy's execution machinery on PostgreSQL (ca.storage.bulk,
# as the events' inserts are): every order and validation checks a limit.
_COUNT_SINCE = select(func.count(), func.min(RateEventRow.at)).where(
    RateEventRow.limit_name == bindparam("limit_name"),
    RateEventRow.key == bindparam("key"),
    RateEventRow.at > bindparam("since"),
)


def check(
    session: Session,
    settings: RateLimitSettings,
    metrics: Metrics,
    name: str,
    key: str,
    now: datetime,
    *,
    adding: int = 1,
) -> None:
    """Raise rateLimited if `adding` more events would exceed the limit for `key`."""
    limit = settings.limit_for(name, key.lower())
    if limit is None:
        return
    since = now - timedelta(seconds=limit.period)
    ((count, oldest),) = fetch_rows(
        session.connection(), _COUNT_SINCE, {"limit_name": name, "key": key.lower(), "since": since}
    )
    if count + adding <= limit.count:
        return
    retry_after = limit.period if oldest is None else (oldest - since).total_seconds()
    retry_after = max(1, math.ceil(retry_after))
    metrics.rate_limited.labels(channel="acme", limit=name).inc()
    what = _DESCRIPTIONS[name].format(key=key)
    raise ACMEProblem(
        "rateLimited",
        f"too many {what}: the limit is {limit.count} per {_period(limit.period)}; "
        f"retry after {retry_after} seconds",
        headers={"Retry-After": str(retry_after)},
    )


def record(
    session: Session, settings: RateLimitSettings, name: str, keys: list[str], now: datetime
) -> None:
    """Count events for `keys`; nothing is written for a limit that is switched off (its
    overrides apply only while it is on), so turning a limit on starts counting afresh."""
    if keys and settings.limits.get(name) is not None:
        rows = [{"limit_name": name, "key": k.lower(), "at": now} for k in keys]
        insert_many(session.connection(), RateEventRow.__table__, rows)


def purge(session: Session, settings: RateLimitSettings, now: datetime) -> int:
    longest = max((lim.period for lim in settings.limits.values() if lim), default=86400)
    result = session.execute(
        delete(RateEventRow).where(RateEventRow.at < now - timedelta(seconds=longest))
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


def registered_name(value: str, labels: int) -> str:
    """The name a per-name limit counts against: the last `labels` labels (no public suffix list:
    a private CA's names sit under the organisation's own domains)."""
    parts = value.removeprefix("*.").split(".")
    return ".".join(parts[-labels:])


def _period(seconds: int) -> str:
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}" if count != 1 else unit
    return f"{seconds} seconds"
