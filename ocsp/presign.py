"""Pre-signing: every live certificate's response is signed ahead of time and kept fresh by jobs.

- `ocsp_presign` runs shortly after any issuance or revocation (the listeners enqueue it in the
  issuing or revoking transaction, debounced by its unique key): it signs responses for
  certificates whose status changed recently and whose stored response is missing or older.
- `ocsp_refresh` runs every few minutes: it renews delegated responder certificates before they
  are due, re-signs responses within `ocsp.refresh_before` of their nextUpdate, catches up on
  certificates with no response at all (e.g. issued from the CLI, where no front end listens),
  and deletes responses of certificates that expired.

Each run is bounded in time; a run that stops early enqueues its successor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from ca import jobs
from ca.errors import CoreError
from ca.storage.models import CertificateRow
from ocsp.responder import Responder, response_row, status_of
from ocsp.storage import OCSPResponseRow, upsert_responses

if TYPE_CHECKING:
    from ca.core import CACore
    from ca.issuers import Issuer

log = logging.getLogger("privca.ocsp")

JOB_PRESIGN = "ocsp_presign"
JOB_REFRESH = "ocsp_refresh"
REFRESH_EVERY = timedelta(minutes=5)
RECENT = timedelta(hours=1)  # how far back `ocsp_presign` looks for status changes
RUN_BUDGET = 20.0  # seconds one job run may spend before handing over to a successor
RESPONDER_MARGIN = timedelta(hours=1)  # jobs renew responder certificates this much earlier
WRITE_CHUNK = 32  # certificates whose responses one write transaction stores

_COLUMNS = (
    CertificateRow.id,
    CertificateRow.serial,
    CertificateRow.status,
    CertificateRow.revoked_at,
    CertificateRow.revocation_reason,
    CertificateRow.status_changed_at,
)


def sign_rows(responder: Responder, issuer: Issuer, rows: Sequence[Any]) -> int:
    """Sign and store responses (each pre-signed CertID hash) for certificate rows.

    Stored WRITE_CHUNK certificates at a time: on SQLite a write transaction holds the one
    database write lock, and a batch of hundreds of upserts held it long enough to show in the
    issuing requests' p99 latency; short transactions let those writers in between.
    """
    for start in range(0, len(rows), WRITE_CHUNK):
        _sign_and_store(responder, issuer, rows[start : start + WRITE_CHUNK])
    return len(rows)


def _sign_and_store(responder: Responder, issuer: Issuer, rows: Sequence[Any]) -> None:
    key_hash = responder.signing_key(issuer, margin=RESPONDER_MARGIN).key_hash
    records = []
    for row in rows:
        status = status_of(row.status, row.revoked_at, row.revocation_reason)
        for hash_name in responder.settings.presign_hashes:
            cert_id = responder.cert_id(issuer, int(row.serial, 16), hash_name)
            der, this_update, next_update = responder.sign(
                issuer, [(cert_id, status)], validity=responder.settings.validity
            )
            records.append(
                response_row(
                    row.id,
                    hash_name,
                    issuer,
                    row.serial,
                    status,
                    row.status_changed_at,
                    der,
                    this_update,
                    next_update,
                    key_hash,
                )
            )
    with responder.core.database.write() as session:
        upsert_responses(session, records)


def _stale(
    session: Session, responder: Responder, issuer: Issuer, *, recent_only: bool, limit: int
) -> list[Any]:
    """Live certificates with a stored response (for any pre-signed hash) missing or older
    than their status."""
    c, r = CertificateRow, OCSPResponseRow
    now = responder.core.now()
    found: dict[int, Any] = {}
    for hash_name in responder.settings.presign_hashes:
        statement = (
            select(*_COLUMNS)
            .select_from(c)
            .outerjoin(r, and_(r.certificate_id == c.id, r.hash_algorithm == hash_name))
            .where(
                c.issuer_id == issuer.id,
                c.status.in_(("issued", "revoked")),
                c.not_after > now,
                or_(
                    r.certificate_id.is_(None),
                    r.cert_status_changed_at < c.status_changed_at,
                    and_(c.status == "revoked", r.cert_status != "revoked"),
                ),
            )
        )
        if recent_only:
            statement = statement.where(c.status_changed_at >= now - RECENT)
        for row in session.execute(statement.limit(limit - len(found))).all():
            found.setdefault(row.id, row)
        if len(found) >= limit:
            break
    return list(found.values())


def _due(session: Session, responder: Responder, issuer: Issuer, limit: int) -> list[Any]:
    """Live certificates whose stored response is within refresh_before of its nextUpdate."""
    c, r = CertificateRow, OCSPResponseRow
    now = responder.core.now()
    refresh_at = now + timedelta(seconds=responder.settings.refresh_before)
    return list(
        session.execute(
            select(*_COLUMNS)
            .select_from(r)
            .join(c, c.id == r.certificate_id)
            .where(
                r.next_update <= refresh_at,
                r.issuer_id == issuer.id,
                r.hash_algorithm == responder.settings.presign_hashes[0],
                c.not_after > now,
                c.status.in_(("issued", "revoked")),
            )
            .limit(limit)
        ).all()
    )


def presign(
    responder: Responder, *, recent_only: bool, budget: float = RUN_BUDGET
) -> tuple[int, bool]:
    """Sign what is missing or stale; returns (responses signed, whether work remains)."""
    started = time.monotonic()
    signed = 0
    batch = responder.settings.batch
    for issuer in responder.core.issuers.values():
        while True:
            with responder.core.database.read() as session:
                rows = _stale(session, responder, issuer, recent_only=recent_only, limit=batch)
            signed += sign_rows(responder, issuer, rows)
            if len(rows) < batch:
                break
            if time.monotonic() - started > budget:
                return signed, True
    return signed, False


def refresh(responder: Responder, *, budget: float = RUN_BUDGET) -> tuple[int, bool]:
    """Renew responders, re-sign responses near nextUpdate, back-fill, drop expired ones."""
    started = time.monotonic()
    core = responder.core
    signed = 0
    batch = responder.settings.batch
    for issuer in core.issuers.values():
        responder.signing_key(issuer, margin=RESPONDER_MARGIN)
        while True:
            with core.database.read() as session:
                rows = _due(session, responder, issuer, batch)
            signed += sign_rows(responder, issuer, rows)
            if len(rows) < batch:
                break
            if time.monotonic() - started > budget:
                return signed, True
    more_signed, more = presign(responder, recent_only=False, budget=budget)
    with core.database.write() as session:
        expired = select(CertificateRow.id).where(CertificateRow.not_after <= core.now())
        session.execute(
            delete(OCSPResponseRow).where(
                OCSPResponseRow.next_update <= core.now(),
                OCSPResponseRow.certificate_id.in_(expired),
            )
        )
    return signed + more_signed, more


def install(core: CACore, responder: Responder) -> None:
    """Register the jobs and the listeners that trigger pre-signing."""

    def presign_job(core: CACore, job: jobs.Job) -> None:
        try:
            _, more = presign(responder, recent_only=True)
        except CoreError as exc:
            raise jobs.RetryLater(exc.safe_detail) from None
        if more:
            with core.database.write() as session:
                _enqueue(core, session)

    def refresh_job(core: CACore, job: jobs.Job) -> None:
        try:
            _, more = refresh(responder)
        except CoreError as exc:
            raise jobs.RetryLater(exc.safe_detail) from None
        if more:
            with core.database.write() as session:
                jobs.enqueue(session, JOB_REFRESH, {}, run_at=core.now(), unique_key="ocsp:refresh")

    def issued(session: Session, issuer: Issuer, row_id: int) -> None:
        # One run a second signs for every certificate issued meanwhile: under load that is one
        # job per batch instead of per certificate. A request that comes first is signed fresh.
        # Issuances sharing a transaction (group commit) look the job up once between them.
        transaction = session.get_transaction()
        if transaction is not None and session.info.get(_PRESIGN_QUEUED_IN) is transaction:
            return
        _enqueue(core, session, delay=PRESIGN_BATCH_DELAY)
        session.info[_PRESIGN_QUEUED_IN] = transaction

    def revoked(session: Session, issuer: Issuer, row_id: int) -> None:
        _enqueue(core, session)

    core.job_handlers[JOB_PRESIGN] = presign_job
    core.job_handlers[JOB_REFRESH] = refresh_job
    core.recurring_jobs[JOB_REFRESH] = REFRESH_EVERY
    core.issuance_listeners.append(issued)
    core.revocation_listeners.append(revoked)


PRESIGN_BATCH_DELAY = timedelta(seconds=1)
_PRESIGN_QUEUED_IN = "ocsp.presign_queued_in"  # session.info: the transaction that queued it


def _enqueue(core: CACore, session: Session, delay: timedelta = timedelta(0)) -> None:
    jobs.enqueue(session, JOB_PRESIGN, {}, run_at=core.now() + delay, unique_key="ocsp:presign")
