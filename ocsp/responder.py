"""The OCSP responder: CertID -> the core's status -> a signed OCSPResponse (RFC 6960, RFC 5019).

Hot path. A single-CertID request without a usable nonce is answered from an in-process cache of
final response bytes; on a miss, one query reads the certificate's status together with its
pre-signed response, which is served if it was signed for the certificate's current status
(`status_changed_at`) and is not close to its nextUpdate. Otherwise the response is signed on the
spot and stored (this only happens before the pre-signing job has caught up).

Freshness across processes. At most every POLL_INTERVAL seconds one thread (a request thread
that finds the watch due and nobody else running it, or the dedicated listener's watch thread)
asks the database which certificates changed status since the last look (the (issuer_id,
status_changed_at) index, with an overlap for transactions that committed late) and drops their
cached answers, so a revocation made by any process is served at most about two poll intervals
after it commits. No request waits for that query.

When the watch fails (database down or slow): once it has not succeeded for
`[frontends.ocsp] watch_stale` seconds, no answer is served from memory; every request reads the
certificate's status from the database again, and gets tryLater (503) if that fails too. A node
cut off from the database therefore stops answering instead of serving "good" for a certificate
another node has revoked.

Requests with a nonce (RFC 8954) or several CertIDs are signed fresh, never cached.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from asn1crypto import x509 as asn1_x509
from sqlalchemy import and_, select
from sqlalchemy.exc import SQLAlchemyError

from ca.errors import CoreError, Unavailable
from ca.storage.models import CertificateRow
from ocsp import delegation, messages
from ocsp.messages import (
    GOOD,
    MALFORMED_REQUEST,
    REVOKED,
    TRY_LATER,
    UNAUTHORIZED,
    UNKNOWN,
    CertID,
    Malformed,
    SingleStatus,
)
from ocsp.settings import OCSPSettings, ocsp_settings
from ocsp.storage import OCSPResponseRow, upsert_responses

if TYPE_CHECKING:
    from ca.core import CACore
    from ca.issuers import Issuer

log = logging.getLogger("privca.ocsp")

POLL_INTERVAL = 0.2  # seconds between looks for status changes made by any process
WATCH_OVERLAP = timedelta(seconds=10)
LOG_EVERY = 10.0  # seconds between log lines about the same ongoing failure
FRESH_MARGIN = timedelta(minutes=1)  # a stored response this close to nextUpdate is re-signed
NOT_ISSUED_REVOCATION_TIME = datetime(1970, 1, 1, tzinfo=UTC)  # RFC 6960 §2.2
CERTIFICATE_HOLD = 6

HASHES = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
HASH_OIDS = {name: oid for oid, name in messages.HASH_NAMES.items()}


@dataclass(frozen=True)
class Answer:
    """An OCSPResponse ready for HTTP: bytes, status code, and caching facts when cacheable."""

    http_status: int
    der: bytes
    cacheable: bool = False
    next_update_ts: float = 0.0
    etag: str = ""
    last_modified: str = ""
    expires: str = ""


def _error(http_status: int, ocsp_status: int) -> Answer:
    return Answer(http_status, messages.error_response(ocsp_status))


MALFORMED = _error(400, MALFORMED_REQUEST)
NOT_SERVED = _error(403, UNAUTHORIZED)
TRY_AGAIN = _error(503, TRY_LATER)


def cacheable_answer(der: bytes, this_update: datetime, next_update: datetime) -> Answer:
    return Answer(
        200,
        der,
        cacheable=True,
        next_update_ts=next_update.timestamp(),
        etag='"' + hashlib.sha256(der).hexdigest()[:32] + '"',
        last_modified=format_datetime(this_update, usegmt=True),
        expires=format_datetime(next_update, usegmt=True),
    )


@dataclass
class _Cached:
    answer: Answer
    issuer_id: int
    serial: str
    snapshot: datetime | None  # the certificate's status_changed_at it reflects
    status: str  # the certificate's status it reflects ("" when there is no row)
    reload_at: float  # wall-clock time after which it is read again


@dataclass(frozen=True)
class IssuerHashes:
    issuer: Issuer
    by_hash: dict[str, tuple[bytes, bytes]]  # hash name -> (issuerNameHash, issuerKeyHash)


def issuer_hashes(issuer: Issuer) -> IssuerHashes:
    parsed = asn1_x509.Certificate.load(issuer.certificate_der)
    name = parsed.subject.dump()
    key_bits = bytes(parsed.public_key["public_key"])
    return IssuerHashes(
        issuer,
        {n: (h(name).digest(), h(key_bits).digest()) for n, h in HASHES.items()},
    )


_STATUS_NAMES = {"issued": GOOD, "revoked": REVOKED}


def oldest_eighth(mapping: dict[Any, Any]) -> list[Any]:
    """The first eighth (at least one) of a cache's keys: insertion order approximates age
    well enough to make room in a bounded cache."""
    return list(itertools.islice(mapping, max(1, len(mapping) // 8)))


class FailureLog:
    """Logs an ongoing failure at most every LOG_EVERY seconds, with the count meanwhile."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self.logged_at = -LOG_EVERY

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self.logged_at >= LOG_EVERY:
            self.logged_at = now
            # The type only: a driver's message may carry connection details.
            log.warning("%s failed (%d so far): %s", self.what, self.failures, type(exc).__name__)

    def succeeded(self) -> None:
        if self.failures:
            log.warning("%s works again after %d failures", self.what, self.failures)
            self.failures = 0
            self.logged_at = -LOG_EVERY


def status_of(status: str, revoked_at: datetime | None, reason: int | None) -> SingleStatus:
    if status == "revoked":
        return SingleStatus(REVOKED, revoked_at, reason)
    return SingleStatus(GOOD)


class Responder:
    """One per process: issuer lookup, signing keys, the answer cache and the change watch."""

    def __init__(self, core: CACore, settings: OCSPSettings | None = None) -> None:
        self.core = core
        # False where a thread of its own runs the change watch (the dedicated listener).
        self.polls_in_requests = True
        self.settings = settings or ocsp_settings(core.config)
        self._index: dict[tuple[bytes, bytes, bytes], Issuer] | None = None
        self._hashes: dict[int, IssuerHashes] = {}
        self._keys: dict[int, delegation.SigningKey] = {}
        self._key_lock = threading.Lock()
        self._cache: dict[bytes, _Cached] = {}
        self._by_certificate: dict[tuple[int, str], set[bytes]] = {}
        self._cache_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._next_poll = 0.0
        self._watch_since: datetime | None = None
        self.last_poll_ok = -float("inf")  # time.monotonic() of the last successful watch
        self._watch_failures = FailureLog("OCSP change watch")
        self._database_failures = FailureLog("OCSP status lookup")

    # -- issuers and keys ---------------------------------------------------------------------

    def issuer_index(self) -> dict[tuple[bytes, bytes, bytes], Issuer]:
        """(hash OID, issuerNameHash, issuerKeyHash) -> issuer, for every issuer with a key."""
        if self._index is None:
            index = {}
            for issuer in self.core.issuers.values():
                hashes = issuer_hashes(issuer)
                self._hashes[issuer.id] = hashes
                for name, (name_hash, key_hash) in hashes.by_hash.items():
                    index[(HASH_OIDS[name], name_hash, key_hash)] = issuer
            self._index = index
        return self._index

    def hashes(self, issuer: Issuer) -> IssuerHashes:
        self.issuer_index()
        return self._hashes[issuer.id]

    def cert_id(self, issuer: Issuer, serial: int, hash_name: str) -> bytes:
        """The DER CertID an RFC 5019 client sends for this certificate."""
        name_hash, key_hash = self.hashes(issuer).by_hash[hash_name]
        return messages.encode_cert_id(HASH_OIDS[hash_name], name_hash, key_hash, serial)

    def signing_key(self, issuer: Issuer, *, margin: timedelta = timedelta(0)) -> Any:
        """The key for the issuer's responses (renews a delegated certificate when due)."""
        renew_before = timedelta(seconds=self.settings.responder_renew_before) + margin
        now = self.core.now()
        key = self._keys.get(issuer.id)
        if key is not None and (
            self.settings.responder == "issuer" or key.not_after - now > renew_before
        ):
            return key
        with self._key_lock:
            key = self._keys.get(issuer.id)
            if key is None or key.not_after - self.core.now() <= renew_before:
                key = delegation.current_key(self.core, issuer, self.settings, margin=margin)
                self._keys[issuer.id] = key
        return key

    # -- signing --------------------------------------------------------------------------------

    def sign(
        self,
        issuer: Issuer,
        singles: list[tuple[bytes, SingleStatus]],
        *,
        validity: int,
        nonce: bytes | None = None,
    ) -> tuple[bytes, datetime, datetime]:
        """Sign one BasicOCSPResponse over the (CertID DER, status) pairs; raises Unavailable."""
        key = self.signing_key(issuer)
        now = self.core.now().replace(microsecond=0)
        next_update = min(now + timedelta(seconds=validity), key.not_after.replace(microsecond=0))
        encoded = [
            messages.single_response(cert_id, status, now, next_update)
            for cert_id, status in singles
        ]
        extended_revoke = any(
            status.status == REVOKED and status.revoked_at == NOT_ISSUED_REVOCATION_TIME
            for _, status in singles
        )
        tbs = messages.response_data(
            key.key_hash, now, encoded, nonce=nonce, extended_revoke=extended_revoke
        )
        started = time.perf_counter()
        try:
            signature = key.signer.sign(tbs)
        except Exception as exc:
            self.core.metrics.hsm_errors.labels(key=key.label).inc()
            log.error("OCSP signing failed for %s: %s", issuer.name, type(exc).__name__)
            raise Unavailable("the signing token is not available; try again later") from exc
        self.core.metrics.hsm_sign_seconds.labels(key=key.label).observe(
            time.perf_counter() - started
        )
        der = messages.ocsp_response(
            tbs, messages.SIGNATURE_ALGORITHMS[key.signer.algorithm], signature, key.certificates
        )
        return der, now, next_update

    def not_issued_status(self) -> SingleStatus:
        """unknown, or RFC 6960 §2.2's "revoked" for serials never issued, per configuration."""
        if self.settings.unknown_for_unissued:
            return SingleStatus(UNKNOWN)
        return SingleStatus(REVOKED, NOT_ISSUED_REVOCATION_TIME, CERTIFICATE_HOLD)

    # -- answering ------------------------------------------------------------------------------

    def answer(self, request_der: bytes) -> Answer:
        """The HTTP-ready answer to a DER OCSPRequest; never raises for bad input."""
        return self.answer_and_key(request_der)[0]

    def answer_and_key(self, request_der: bytes) -> tuple[Answer, bytes | None]:
        """Like answer(), plus the key of the cache entry the answer is (None if not cached).

        A caller may keep data derived from the answer (the HTTP listener keeps the response
        bytes) for as long as `current(key)` still returns this same answer object.
        """
        try:
            request = messages.parse_request(request_der, max_cert_ids=self.settings.max_cert_ids)
        except Malformed:
            return MALFORMED, None
        index = self.issuer_index()
        issuers = []
        for cert_id in request.cert_ids:
            issuer = index.get((cert_id.hash_oid, cert_id.name_hash, cert_id.key_hash))
            if issuer is None:
                return NOT_SERVED, None
            issuers.append(issuer)
        if len({issuer.id for issuer in issuers}) != 1:
            return NOT_SERVED, None  # one signature, one responder: ask each issuer separately
        issuer = issuers[0]
        if self.polls_in_requests:
            self.watch_changes(blocking=False)
        nonce = request.nonce if _usable_nonce(request.nonce) else None
        try:
            if nonce is None and len(request.cert_ids) == 1:
                key = request.cert_ids[0].der
                answer = self._cached(issuer, request.cert_ids[0])
                return answer, key if self.current(key) is answer else None
            return self._fresh(issuer, request.cert_ids, nonce), None
        except CoreError as exc:
            log.warning("OCSP answer for %s unavailable: %s", issuer.name, exc.safe_detail)
            return TRY_AGAIN, None
        except SQLAlchemyError as exc:  # the database is down or overloaded: not a bug
            self._database_failures.failed(exc)
            return TRY_AGAIN, None

    def current(self, key: bytes) -> Answer | None:
        """The cached answer under `key` until it is due to be read again, else None.

        It says nothing about the change watch: see watch_fresh().
        """
        entry = self._cache.get(key)
        if entry is not None and time.time() < entry.reload_at:
            return entry.answer
        return None

    def watch_fresh(self, now: float | None = None) -> bool:
        """Whether the change watch succeeded within `watch_stale` seconds (monotonic `now`),
        that is whether answers kept in memory may still be served."""
        now = time.monotonic() if now is None else now
        return now - self.last_poll_ok < self.settings.watch_stale

    def _cached(self, issuer: Issuer, cert_id: CertID) -> Answer:
        if self.watch_fresh():
            answer = self.current(cert_id.der)
            if answer is not None:
                return answer
        entry = self._load(issuer, cert_id)
        if self.settings.cache_entries:
            self._remember(cert_id.der, entry)
        return entry.answer

    def _lookup(self, issuer: Issuer, serial: int, hash_name: str | None) -> Any:
        if serial <= 0:
            return None
        c, r = CertificateRow, OCSPResponseRow
        with self.core.database.read() as session:
            return session.execute(
                select(
                    c.id,
                    c.status,
                    c.revoked_at,
                    c.revocation_reason,
                    c.status_changed_at,
                    r.der,
                    r.cert_status,
                    r.cert_status_changed_at,
                    r.this_update,
                    r.next_update,
                )
                .select_from(c)
                .outerjoin(r, and_(r.certificate_id == c.id, r.hash_algorithm == (hash_name or "")))
                .where(c.issuer_id == issuer.id, c.serial == format(serial, "x"))
            ).first()

    def _load(self, issuer: Issuer, cert_id: CertID) -> _Cached:
        hash_name = cert_id.hash_name
        row = self._lookup(issuer, cert_id.serial, hash_name)
        serial = format(cert_id.serial, "x") if cert_id.serial > 0 else ""
        now = self.core.now()
        if row is None or row.status not in ("issued", "revoked"):
            der, this_update, next_update = self.sign(
                issuer,
                [(cert_id.der, self.not_issued_status())],
                validity=self.settings.unknown_validity,
            )
            snapshot = row.status_changed_at if row is not None else None
            status = row.status if row is not None else ""
            return self._entry(der, this_update, next_update, issuer, serial, snapshot, status)
        if (
            row.der is not None
            and row.cert_status == _STATUS_NAMES[row.status]
            and row.cert_status_changed_at >= row.status_changed_at
            and row.next_update - now > FRESH_MARGIN
        ):
            return self._entry(
                row.der,
                row.this_update,
                row.next_update,
                issuer,
                serial,
                row.status_changed_at,
                row.status,
            )
        status = status_of(row.status, row.revoked_at, row.revocation_reason)
        der, this_update, next_update = self.sign(
            issuer, [(cert_id.der, status)], validity=self.settings.validity
        )
        if hash_name in self.settings.presign_hashes:
            self._store(issuer, row, serial, hash_name, status, der, this_update, next_update)
        return self._entry(
            der, this_update, next_update, issuer, serial, row.status_changed_at, row.status
        )

    def _store(
        self,
        issuer: Issuer,
        row: Any,
        serial: str,
        hash_name: str,
        status: SingleStatus,
        der: bytes,
        this_update: datetime,
        next_update: datetime,
    ) -> None:
        try:
            with self.core.database.write() as session:
                upsert_responses(
                    session,
                    [
                        response_row(
                            row.id,
                            hash_name,
                            issuer,
                            serial,
                            status,
                            row.status_changed_at,
                            der,
                            this_update,
                            next_update,
                            self.signing_key(issuer).key_hash,
                        )
                    ],
                )
        except Exception as exc:  # serving the answer matters more than keeping it
            log.warning("could not store an OCSP response: %s", type(exc).__name__)

    def _entry(
        self,
        der: bytes,
        this_update: datetime,
        next_update: datetime,
        issuer: Issuer,
        serial: str,
        snapshot: datetime | None,
        status: str,
    ) -> _Cached:
        return _Cached(
            cacheable_answer(der, this_update, next_update),
            issuer.id,
            serial,
            snapshot,
            status,
            (next_update - FRESH_MARGIN).timestamp(),
        )

    def _fresh(self, issuer: Issuer, cert_ids: tuple[CertID, ...], nonce: bytes | None) -> Answer:
        singles = []
        validity = self.settings.validity
        for cert_id in cert_ids:
            row = self._lookup(issuer, cert_id.serial, None)
            if row is None or row.status not in ("issued", "revoked"):
                singles.append((cert_id.der, self.not_issued_status()))
                validity = min(validity, self.settings.unknown_validity)
            else:
                singles.append(
                    (cert_id.der, status_of(row.status, row.revoked_at, row.revocation_reason))
                )
        der, _, _ = self.sign(issuer, singles, validity=validity, nonce=nonce)
        return Answer(200, der)

    # -- the cache and the change watch ---------------------------------------------------------

    def _remember(self, key: bytes, entry: _Cached) -> None:
        with self._cache_lock:
            if len(self._cache) >= self.settings.cache_entries:
                for old in oldest_eighth(self._cache):
                    self._forget(old)
            self._cache[key] = entry
            self._by_certificate.setdefault((entry.issuer_id, entry.serial), set()).add(key)

    def _forget(self, key: bytes) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            keys = self._by_certificate.get((entry.issuer_id, entry.serial))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_certificate[(entry.issuer_id, entry.serial)]

    def poll_if_due(self, *, blocking: bool = True) -> None:
        """Drop cached answers of certificates whose status changed (rate-limited, any process);
        raises the database's error. Without `blocking`, return at once if another thread is
        running the watch."""
        if time.monotonic() < self._next_poll:
            return
        if not self._poll_lock.acquire(blocking=blocking):
            return
        try:
            if time.monotonic() < self._next_poll:
                return
            try:
                self._poll()
                self.last_poll_ok = time.monotonic()
            finally:
                self._next_poll = time.monotonic() + POLL_INTERVAL
        finally:
            self._poll_lock.release()

    def watch_changes(self, *, blocking: bool = True) -> bool:
        """poll_if_due(), logging a failure (rate-limited) instead of raising; False if it
        failed. A failing watch makes answers in memory unusable after `watch_stale`."""
        try:
            self.poll_if_due(blocking=blocking)
        except Exception as exc:
            self._watch_failures.failed(exc)
            return False
        self._watch_failures.succeeded()
        return True

    def _poll(self) -> None:
        now = self.core.now()
        since = (self._watch_since or now) - WATCH_OVERLAP
        issuer_ids = [hashes.issuer.id for hashes in self._hashes.values()]
        c = CertificateRow
        with self.core.database.read() as session:
            changed = session.execute(
                select(c.issuer_id, c.serial, c.status, c.status_changed_at).where(
                    c.issuer_id.in_(issuer_ids), c.status_changed_at > since
                )
            ).all()
        self._watch_since = now
        if not changed or not self._cache:
            return
        with self._cache_lock:
            for issuer_id, serial, status, status_changed_at in changed:
                keys = self._by_certificate.get((issuer_id, serial))
                if not keys:
                    continue
                for key in list(keys):
                    entry = self._cache.get(key)
                    # Status first: clocks of different nodes need not agree on the order.
                    if (
                        entry is None
                        or entry.status != status
                        or entry.snapshot is None
                        or entry.snapshot < status_changed_at
                    ):
                        self._forget(key)

    def forget_all(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._by_certificate.clear()


def _usable_nonce(value: bytes | None) -> bool:
    """RFC 8954 §2.1: echo nonces of 1 to 32 octets; answer longer ones without a nonce."""
    if value is None:
        return False
    inner = len(value)
    if len(value) >= 2 and value[0] == 0x04 and value[1] < 0x80 and value[1] + 2 == len(value):
        inner = value[1]
    return 1 <= inner <= messages.MAX_NONCE


def response_row(
    certificate_id: int,
    hash_name: str,
    issuer: Issuer,
    serial: str,
    status: SingleStatus,
    status_changed_at: datetime,
    der: bytes,
    this_update: datetime,
    next_update: datetime,
    responder_key_hash: bytes,
) -> dict[str, Any]:
    """The ocsp_responses row (as a dict for upsert_responses) for one pre-signed response."""
    return {
        "certificate_id": certificate_id,
        "hash_algorithm": hash_name,
        "issuer_id": issuer.id,
        "serial": serial,
        "cert_status": status.status,
        "cert_status_changed_at": status_changed_at,
        "produced_at": this_update,
        "this_update": this_update,
        "next_update": next_update,
        "responder": responder_key_hash.hex(),
        "der": der,
    }
