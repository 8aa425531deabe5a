"""CRLs (RFC 5280 §5): complete and delta CRLs per issuer and shard, built, signed, stored, renewed.

Layout. Every issuer has its whole CRL (shard 0) at the stable URL certificates name in their CDP
(`/crl/<issuer>.crl`). With `[crl] shards = N` (N > 1) new certificates name one of N
shard CRLs instead (`/crl/<issuer>/shard/<k>.crl`, k = 1 + serial mod N), each carrying an
Issuing Distribution Point; the whole CRL stays complete for relying parties holding older
certificates. With `delta = true` every scope also gets a delta CRL (`…/delta.crl`, Delta CRL
Indicator) that complete CRLs and certificates point at through Freshest CRL.

Numbers. A CRL number is reserved in its own short transaction (a row whose `der` is NULL) before
anything is built; the unique (issuer, shard, number) constraint makes a racing process retry with
the next number, so numbers rise strictly per scope across any number of processes. Complete and
delta CRLs of one scope share the sequence (RFC 5280 §5.2.4).

Speed. cryptography's builder needs a RevokedCertificate object per entry (about 9 s and 640 MiB
for a million). The revokedCertificates list is therefore encoded here straight from database rows
into one buffer and spliced into the TBSCertList that cryptography builds (with a capture key) for
the same CRL without entries; the tests check the result byte for byte against the builder.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca import jobs
from ca.config import Config, CRLConfig
from ca.errors import Unavailable
from ca.signing import capture_key
from ca.storage.models import CertificateRow, CRLRow

if TYPE_CHECKING:
    from ca.core import CACore
    from ca.issuers import Issuer

log = logging.getLogger("privca.crl")

JOB_GENERATE = "crl_generate"
JOB_REFRESH = "crl_refresh"
REFRESH_EVERY = timedelta(minutes=5)
WHOLE = 0  # the shard number of an issuer's whole CRL
# A delta lists every change since its base's thisUpdate minus this margin: a revocation whose
# transaction started before the base was read but committed after it is in the next delta.
DELTA_OVERLAP = timedelta(minutes=5)
KEEP = 3  # signed CRLs kept per scope and kind (the newest is served)
ABANDONED_RESERVATION = timedelta(hours=1)
_RESERVE_ATTEMPTS = 8
_FETCH_BATCH = 20000


# -- configuration ----------------------------------------------------------------------------


def crl_settings(config: Config) -> CRLConfig:
    """The `[crl]` settings (validated by ca.config at start)."""
    return config.crl


# -- URLs and certificate extensions ---------------------------------------------------------------


def crl_url(core: CACore, issuer_name: str, shard: int = WHOLE, *, delta: bool = False) -> str:
    """The URL a CRL scope is published at."""
    if shard == WHOLE:
        return (
            f"{core.urls.revocation}/crl/{issuer_name}/delta.crl"
            if delta
            else core.urls.crl(issuer_name)
        )
    path = f"{core.urls.revocation}/crl/{issuer_name}/shard/{shard}"
    return f"{path}/delta.crl" if delta else f"{path}.crl"


def shard_of(serial: int, shards: int) -> int:
    """The shard a serial number belongs to (WHOLE when not sharded)."""
    return WHOLE if shards <= 1 else 1 + serial % shards


def distribution_point_urls(core: CACore, issuer_name: str, serial: int) -> list[str]:
    """The CRL URLs for a new certificate's CRL Distribution Points."""
    settings = crl_settings(core.config)
    return [crl_url(core, issuer_name, shard_of(serial, settings.shards))]


def freshest_crl_urls(core: CACore, issuer_name: str, serial: int) -> list[str]:
    """The delta CRL URLs for a new certificate's Freshest CRL extension (empty without deltas)."""
    settings = crl_settings(core.config)
    if not settings.delta:
        return []
    return [crl_url(core, issuer_name, shard_of(serial, settings.shards), delta=True)]


def certificate_extensions(
    core: CACore, issuer_name: str, serial: int
) -> list[tuple[x509.ExtensionType, bool]]:
    """CRL Distribution Points (and Freshest CRL with deltas) for a new certificate, as
    (extension, critical) pairs for the issuance pipeline to add."""

    def points(urls: list[str]) -> list[x509.DistributionPoint]:
        return [
            x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None)
            for u in urls
        ]

    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (
            x509.CRLDistributionPoints(points(distribution_point_urls(core, issuer_name, serial))),
            False,
        )
    ]
    freshest = freshest_crl_urls(core, issuer_name, serial)
    if freshest:
        extensions.append((x509.FreshestCRL(points(freshest)), False))
    return extensions


# -- DER ------------------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _header(tag: int, length: int) -> bytes:
    return bytes((tag,)) + _length(length)


def _elements(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(tag, offset, end) of each DER element between start and end (definite lengths only)."""
    out = []
    offset = start
    while offset < end:
        tag = data[offset]
        first = data[offset + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            count = first & 0x7F
            header = 2 + count
            length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
        out.append((tag, offset, offset + header + length))
        offset += header + length
    if offset != end:
        raise ValueError("DER element overruns its container")
    return out


def _content(data: bytes) -> tuple[int, int]:
    """Start and end of the content of the single DER element `data`."""
    ((_tag, start, end),) = _elements(data, 0, len(data))
    first = data[1]
    return start + (2 if first < 0x80 else 2 + (first & 0x7F)), end


# RFC 5280 §5.3.1 reasonCode and §5.3.2 invalidityDate entry extensions, pre-encoded.
_REASON_EXTENSION = {
    code: bytes.fromhex("300a0603551d1504030a01") + bytes((code,)) for code in range(1, 11)
}
_INVALIDITY_PREFIX = bytes.fromhex("30180603551d180411")


def _time(value: datetime) -> bytes:
    # RFC 5280 §5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050; values are UTC.
    year = value.year
    if 1950 <= year < 2050:
        return b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (
            year % 100,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
        )
    return _generalized_time(value)


def _generalized_time(value: datetime) -> bytes:
    return b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
    )


def encode_revoked_certificate(
    serial_hex: str, revoked_at: datetime, reason: int | None, invalidity_date: datetime | None
) -> bytes:
    """One revokedCertificates entry (RFC 5280 §5.1.2.6) exactly as cryptography encodes it.

    `serial_hex` is the stored form (lower-case hex); times are UTC. The reason code is left out
    for unspecified (0), as RFC 5280 §5.3.1 asks.
    """
    if len(serial_hex) & 1:
        serial_hex = "0" + serial_hex
    serial = bytes.fromhex(serial_hex)
    if serial[0] & 0x80:
        serial = b"\x00" + serial
    body = b"\x02" + bytes((len(serial),)) + serial + _time(revoked_at)
    extensions = _REASON_EXTENSION[reason] if reason else b""
    if invalidity_date is not None:
        extensions += _INVALIDITY_PREFIX + _generalized_time(invalidity_date)
    if extensions:
        body += b"\x30" + bytes((len(extensions),)) + extensions
    return b"\x30" + bytes((len(body),)) + body


def encode_revoked_certificates(
    entries: Iterable[tuple[str, datetime, int | None, datetime | None]],
) -> bytearray:
    """The concatenated entries of a revokedCertificates list (without its SEQUENCE header)."""
    buffer = bytearray()
    for serial_hex, revoked_at, reason, invalidity_date in entries:
        buffer += encode_revoked_certificate(serial_hex, revoked_at, reason, invalidity_date)
    return buffer


@dataclass(frozen=True)
class CRLTemplate:
    """A TBSCertList without entries, split where the entries go, plus the signature algorithm."""

    before_entries: bytes
    after_entries: bytes
    signature_algorithm: bytes

    def tbs(self, entries: bytes | bytearray) -> bytes:
        middle = _header(0x30, len(entries)) + entries if entries else b""
        length = len(self.before_entries) + len(middle) + len(self.after_entries)
        return b"".join((_header(0x30, length), self.before_entries, middle, self.after_entries))

    def assemble(self, tbs: bytes, signature: bytes) -> bytes:
        """The CertificateList: TBS, algorithm, signature as a BIT STRING."""
        bits = _header(0x03, len(signature) + 1) + b"\x00" + signature
        length = len(tbs) + len(self.signature_algorithm) + len(bits)
        return b"".join((_header(0x30, length), tbs, self.signature_algorithm, bits))


def crl_extensions(
    issuer: Issuer,
    number: int,
    *,
    base_number: int | None = None,
    idp_url: str | None = None,
    freshest_url: str | None = None,
) -> list[x509.Extension[x509.ExtensionType]]:
    """The CRL extensions privca puts in a CRL, in order."""
    values: list[tuple[x509.ExtensionType, bool]] = [
        (x509.AuthorityKeyIdentifier(issuer.subject_key_id, None, None), False),
        (x509.CRLNumber(number), False),
    ]
    if base_number is not None:
        values.append((x509.DeltaCRLIndicator(base_number), True))  # RFC 5280 §5.2.4: critical
    if idp_url is not None:
        values.append(
            (
                x509.IssuingDistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(idp_url)],
                    relative_name=None,
                    only_contains_user_certs=False,
                    only_contains_ca_certs=False,
                    only_some_reasons=None,
                    indirect_crl=False,
                    only_contains_attribute_certs=False,
                ),
                True,  # RFC 5280 §5.2.5: critical
            )
        )
    if freshest_url is not None:
        values.append(
            (
                x509.FreshestCRL(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(freshest_url)], None, None, None
                        )
                    ]
                ),
                False,
            )
        )
    return [x509.Extension(value.oid, critical, value) for value, critical in values]


def crl_template(
    issuer: Issuer,
    this_update: datetime,
    next_update: datetime,
    extensions: list[x509.Extension[x509.ExtensionType]],
) -> CRLTemplate:
    """Have cryptography build the CRL without entries (capture key: the CA key is not used)."""
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.certificate.subject,
        last_update=this_update,
        next_update=next_update,
        extensions=extensions,
    )
    key = capture_key(issuer.signer.public_key)
    placeholder = builder.sign(key, issuer.signer.hash_algorithm).public_bytes(Encoding.DER)
    tbs: bytes = key.captured
    start, end = _content(tbs)
    elements = _elements(tbs, start, end)
    # TBSCertList: version, signature, issuer, thisUpdate, nextUpdate, [revokedCertificates],
    # crlExtensions [0]; without entries the list is absent, so the entries go before [0].
    split = next((offset for tag, offset, _ in elements if tag == 0xA0), end)
    outer_start, outer_end = _content(placeholder)
    algorithm = _elements(placeholder, outer_start, outer_end)[1]
    return CRLTemplate(
        before_entries=tbs[start:split],
        after_entries=tbs[split:end],
        signature_algorithm=placeholder[algorithm[1] : algorithm[2]],
    )


def sign_crl(
    core: CACore, issuer: Issuer, template: CRLTemplate, entries: bytes | bytearray
) -> bytes:
    """Splice the entries in, have the issuer's key sign the TBSCertList, return the DER CRL."""
    tbs = template.tbs(entries)
    signature = core.sign(issuer, tbs)
    return template.assemble(tbs, signature)


# -- generation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedCRL:
    """A signed CRL as served: DER plus what HTTP caching needs."""

    issuer: str
    shard: int
    delta: bool
    number: int
    this_update: datetime
    next_update: datetime
    der: bytes
    row_id: int

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.der).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class _Reservation:
    shard: int
    row_id: int
    number: int
    base_number: int | None


def _latest_complete(session: Session, issuer_id: int, shard: int, delta: bool) -> CRLRow | None:
    return session.scalars(
        select(CRLRow)
        .where(
            CRLRow.issuer_id == issuer_id,
            CRLRow.shard == shard,
            CRLRow.delta == delta,
            CRLRow.der.is_not(None),
        )
        .order_by(CRLRow.number.desc())
        .limit(1)
    ).first()


def _reserve(
    core: CACore,
    issuer: Issuer,
    bases: Mapping[int, int | None],
    delta: bool,
    this_update: datetime,
    next_update: datetime,
) -> list[_Reservation]:
    for _attempt in range(_RESERVE_ATTEMPTS):
        try:
            with core.database.write() as session:
                reserved = []
                for shard, base_number in bases.items():
                    current = session.scalar(
                        select(func.max(CRLRow.number)).where(
                            CRLRow.issuer_id == issuer.id, CRLRow.shard == shard
                        )
                    )
                    row = CRLRow(
                        issuer_id=issuer.id,
                        shard=shard,
                        number=(current or 0) + 1,
                        delta=delta,
                        base_number=base_number,
                        this_update=this_update,
                        next_update=next_update,
                        created_at=core.now(),
                        entries=0,
                        der=None,
                    )
                    session.add(row)
                    session.flush()
                    reserved.append(_Reservation(shard, row.id, row.number, base_number))
                return reserved
        except IntegrityError:
            log.info("CRL number for %s taken by another process; retrying", issuer.name)
    raise Unavailable("could not reserve a CRL number; try again")


def _revoked_rows(
    session: Session, issuer_id: int, not_after_from: datetime, changed_since: datetime | None
) -> Any:
    statement = select(
        CertificateRow.serial,
        CertificateRow.revoked_at,
        CertificateRow.revocation_reason,
        CertificateRow.invalidity_date,
    ).where(
        CertificateRow.issuer_id == issuer_id,
        CertificateRow.status == "revoked",
        CertificateRow.not_after >= not_after_from,
    )
    if changed_since is not None:
        statement = statement.where(CertificateRow.status_changed_at >= changed_since)
    return session.execute(
        statement.order_by(CertificateRow.id).execution_options(yield_per=_FETCH_BATCH)
    )


def generate(core: CACore, issuer: Issuer, *, delta: bool = False) -> list[PublishedCRL]:
    """Build, sign and store the issuer's CRLs of one kind for every scope; returns them.

    A delta asked for before any complete CRL exists makes complete CRLs instead. With deltas on,
    new complete CRLs are followed by fresh deltas against them. Raises Unavailable if the token
    cannot sign.
    """
    settings = crl_settings(core.config)
    now = core.now().replace(microsecond=0)
    bases: dict[int, int | None] = dict.fromkeys(settings.scopes)
    changed_since = None
    if delta:
        if not settings.delta:
            raise ValueError("delta CRLs are not enabled ([crl] delta = true)")
        with core.database.read() as session:
            latest = {s: _latest_complete(session, issuer.id, s, False) for s in settings.scopes}
        if any(row is None for row in latest.values()):
            return generate(core, issuer, delta=False)
        bases = {s: row.number for s, row in latest.items()}  # type: ignore[union-attr]
        changed_since = min(row.this_update for row in latest.values()) - DELTA_OVERLAP  # type: ignore[union-attr]
    validity = settings.delta_validity if delta else settings.validity
    next_update = now + timedelta(seconds=validity)
    reservations = _reserve(core, issuer, bases, delta, now, next_update)

    buffers = {s: bytearray() for s in settings.scopes}
    counts = dict.fromkeys(settings.scopes, 0)
    cutoff = now - timedelta(seconds=settings.expired_grace)
    encode = encode_revoked_certificate
    whole = buffers[WHOLE]
    with core.database.read() as session:
        rows = _revoked_rows(session, issuer.id, cutoff, changed_since)
        if settings.shards == 1:
            for serial_hex, revoked_at, reason, invalidity_date in rows:
                whole += encode(serial_hex, revoked_at, reason, invalidity_date)
                counts[WHOLE] += 1
        else:
            shards = settings.shards
            for serial_hex, revoked_at, reason, invalidity_date in rows:
                entry = encode(serial_hex, revoked_at, reason, invalidity_date)
                whole += entry
                shard = 1 + int(serial_hex, 16) % shards
                buffers[shard] += entry
                counts[WHOLE] += 1
                counts[shard] += 1

    published = []
    for reservation in reservations:
        shard = reservation.shard
        extensions = crl_extensions(
            issuer,
            reservation.number,
            base_number=reservation.base_number,
            idp_url=None if shard == WHOLE else crl_url(core, issuer.name, shard),
            freshest_url=crl_url(core, issuer.name, shard, delta=True)
            if settings.delta and not delta
            else None,
        )
        template = crl_template(issuer, now, next_update, extensions)
        der = sign_crl(core, issuer, template, buffers.pop(shard))
        _store(core, reservation, der, counts[shard], delta)
        published.append(
            PublishedCRL(
                issuer.name,
                shard,
                delta,
                reservation.number,
                now,
                next_update,
                der,
                reservation.row_id,
            )
        )
        log.info(
            "signed %s CRL %d for %s shard %d (%d entries)",
            "delta" if delta else "complete",
            reservation.number,
            issuer.name,
            shard,
            counts[shard],
        )
    if settings.delta and not delta:
        published += generate(core, issuer, delta=True)
    return published


def _store(core: CACore, reservation: _Reservation, der: bytes, entries: int, delta: bool) -> None:
    now = core.now()
    with core.database.write() as session:
        row = session.get(CRLRow, reservation.row_id)
        if row is None:
            raise Unavailable("the reserved CRL row disappeared; try again")
        row.der = der
        row.entries = entries
        scope = (CRLRow.issuer_id == row.issuer_id, CRLRow.shard == row.shard)
        kept = session.scalars(
            select(CRLRow.number)
            .where(*scope, CRLRow.delta == delta, CRLRow.der.is_not(None))
            .order_by(CRLRow.number.desc())
            .limit(KEEP)
        ).all()
        if len(kept) == KEEP:
            session.execute(
                delete(CRLRow).where(
                    *scope,
                    CRLRow.delta == delta,
                    CRLRow.der.is_not(None),  # another process may still be signing a lower one
                    CRLRow.number < kept[-1],
                )
            )
        session.execute(
            delete(CRLRow).where(
                *scope, CRLRow.der.is_(None), CRLRow.created_at < now - ABANDONED_RESERVATION
            )
        )


# -- serving ----------------------------------------------------------------------------------


class CRLCache:
    """The newest signed CRL per scope, kept in memory; one cheap query per request checks it."""

    def __init__(self, core: CACore) -> None:
        self.core = core
        self._entries: dict[tuple[int, int, bool], PublishedCRL] = {}
        self._generate_lock = threading.Lock()

    def current(self, issuer_name: str, shard: int, delta: bool) -> PublishedCRL | None:
        """The CRL to serve for a scope, generated on the spot if none exists yet; None if the
        scope is not published (unknown issuer, shard out of range, deltas off)."""
        issuer = self.core.issuers.get(issuer_name)
        settings = crl_settings(self.core.config)
        if issuer is None or shard not in settings.scopes or (delta and not settings.delta):
            return None
        found = self._lookup(issuer, shard, delta)
        if found is not None:
            return found
        with self._generate_lock:
            found = self._lookup(issuer, shard, delta)
            if found is None:
                generate(self.core, issuer, delta=delta)
                found = self._lookup(issuer, shard, delta)
        return found

    def _lookup(self, issuer: Issuer, shard: int, delta: bool) -> PublishedCRL | None:
        key = (issuer.id, shard, delta)
        with self.core.database.read() as session:
            newest = session.execute(
                select(CRLRow.id)
                .where(
                    CRLRow.issuer_id == issuer.id,
                    CRLRow.shard == shard,
                    CRLRow.delta == delta,
                    CRLRow.der.is_not(None),
                )
                .order_by(CRLRow.number.desc())
                .limit(1)
            ).scalar()
            if newest is None:
                return None
            cached = self._entries.get(key)
            if cached is not None and cached.row_id == newest:
                return cached
            row = session.get(CRLRow, newest)
            if row is None or row.der is None:
                return None
            published = PublishedCRL(
                issuer.name,
                shard,
                delta,
                row.number,
                row.this_update,
                row.next_update,
                row.der,
                row.id,
            )
        self._entries[key] = published
        return published


# -- jobs -------------------------------------------------------------------------------------


def _generate_job(core: CACore, job: jobs.Job) -> None:
    issuer = core.issuers.get(str(job.payload.get("issuer")))
    if issuer is None:
        log.warning("CRL job for unknown issuer %r dropped", job.payload.get("issuer"))
        return
    try:
        generate(core, issuer, delta=bool(job.payload.get("delta")))
    except Unavailable as exc:
        raise jobs.RetryLater(exc.safe_detail) from None


def due(core: CACore, issuer: Issuer) -> str | None:
    """What the issuer's CRLs need now: "complete", "delta" or None."""
    settings = crl_settings(core.config)
    now = core.now()
    refresh = timedelta(seconds=settings.refresh_before)
    with core.database.read() as session:
        for shard in settings.scopes:
            base = _latest_complete(session, issuer.id, shard, False)
            if base is None or base.next_update - refresh <= now:
                return "complete"
            if settings.delta and base.this_update + timedelta(seconds=settings.full_every) <= now:
                return "complete"
        if not settings.delta:
            return None
        delta_refresh = timedelta(
            seconds=min(settings.refresh_before, settings.delta_validity // 2)
        )
        for shard in settings.scopes:
            current = _latest_complete(session, issuer.id, shard, True)
            if current is None or current.next_update - delta_refresh <= now:
                return "delta"
    return None


def refresh(core: CACore) -> int:
    """Regenerate every CRL that is missing or close to its nextUpdate; returns how many kinds."""
    count = 0
    for issuer in core.issuers.values():
        kind = due(core, issuer)
        if kind is not None:
            generate(core, issuer, delta=kind == "delta")
            count += 1
    return count


def _refresh_job(core: CACore, job: jobs.Job) -> None:
    try:
        refresh(core)
    except Unavailable as exc:
        raise jobs.RetryLater(exc.safe_detail) from None


def freshness(core: CACore) -> dict[str, dict[str, float]]:
    """For /metrics: seconds since thisUpdate and until nextUpdate of each issuer's whole CRL."""
    now = core.now()
    age: dict[str, float] = {}
    remaining: dict[str, float] = {}
    with core.database.read() as session:
        for issuer in core.issuers.values():
            row = _latest_complete(session, issuer.id, WHOLE, False)
            if row is not None:
                age[issuer.name] = (now - row.this_update).total_seconds()
                remaining[issuer.name] = (row.next_update - now).total_seconds()
    return {"crl_age": age, "crl_next_update": remaining}


def install(core: CACore) -> None:
    """Register the CRL jobs and the revocation listener on the core (validates the settings)."""
    settings = crl_settings(core.config)
    core.job_handlers[JOB_GENERATE] = _generate_job
    core.job_handlers[JOB_REFRESH] = _refresh_job
    core.recurring_jobs[JOB_REFRESH] = REFRESH_EVERY

    def after_revocation(session: Session, issuer: Issuer, row_id: int) -> None:
        # Debounced: a burst of revocations within `crl.debounce` seconds makes one CRL.
        kind = "delta" if settings.delta else "complete"
        jobs.enqueue(
            session,
            JOB_GENERATE,
            {"issuer": issuer.name, "delta": settings.delta},
            run_at=core.now() + timedelta(seconds=settings.debounce),
            unique_key=f"crl:{issuer.name}:{kind}",
        )

    core.revocation_listeners.append(after_revocation)
