"""The tamper-evident audit log: hash-chained entries, signed checkpoints, verification and export.

Every issuance, denial, revocation, key operation and admin action appends one entry. Entries are
numbered 1, 2, 3 … without gaps and each one carries the hash of the one before, so a changed,
removed, inserted or reordered row breaks the chain at a place `verify()` names. Checkpoints, a
signature by the audit key over the (seq, hash) of the chain's tip, stop someone with write access
to the database from cutting the tail off or rewriting the whole chain behind a checkpoint.

What is promised, and what is not
---------------------------------
- An edit to any field of any entry, a deleted entry, an inserted entry and two swapped entries
  are detected and located (`VerifyResult.first_bad_seq`, `VerifyResult.problem`).
- Rows cut off the tail, or a chain rewritten from some entry onwards with freshly computed
  hashes, are detected as far as the last checkpoint: a checkpoint whose entry is gone or now has
  another hash fails verification. Entries appended after the last checkpoint are protected only
  by the hash chain and by `audit_head`; someone who can write the database can delete them *and*
  fix `audit_head` without detection. The same holds for someone who deletes the newest
  checkpoints together with the entries behind them: checkpoints live in the same database. The
  defence is a record kept elsewhere: `verify(expect_seq=N)` (`privca audit verify --expect-seq`)
  fails when the chain ends before an entry known from an export or a monitoring system.
  Checkpoint often (`checkpoint_due()`) and keep exported copies elsewhere.
- `verify()` checks checkpoint signatures against the public keys the caller trusts; a checkpoint
  whose key the caller does not know fails verification rather than being skipped.

Entry hash (version 1)
----------------------
``hash`` is the lower-case hex SHA-256 of the concatenation of nine netstrings (D. J. Bernstein's
netstrings: the decimal byte length in ASCII, ``:``, the bytes, ``,``), each over UTF-8 text::

    ns("privca-audit-v1") ns(seq) ns(at) ns(actor) ns(channel) ns(action) ns(object)
    ns(details) ns(prev_hash)

- ``seq``: decimal, no leading zeros (``1``, ``2`` …).
- ``at``: UTC, ISO 8601 with exactly six fractional digits and a ``Z``:
  ``2025-01-02T03:04:05.000006Z``.
- ``actor``, ``channel``, ``action``, ``object``: the stored text as is.
- ``details``: canonical JSON of a JSON object, which is also exactly what the ``details`` column
  holds: keys sorted by Unicode code point at every level, no whitespace (separators ``,`` and
  ``:``), non-ASCII characters written as themselves in UTF-8, and in strings only ``"``, ``\\``
  and U+0000 to U+001F escaped (``\\b \\f \\n \\r \\t``, the rest as ``\\u00xx`` with lower-case
  hex). Values are strings, integers, ``true``, ``false``, ``null``, arrays and objects; floats
  are refused at append so that number formatting never varies between JSON libraries. In Python:
  ``json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.
- ``prev_hash``: the previous entry's ``hash``; for entry 1, 64 ``0`` characters.

Worked example (an auditor's tool should reproduce it)::

    seq=1  at=2025-01-02T03:04:05.000006Z  actor=admin:alice  channel=cli
    action=issuer_created  object=issuer:root  details={"key_type":"ec-p256"}
    prev_hash=0000000000000000000000000000000000000000000000000000000000000000
    preimage = 15:privca-audit-v1,1:1,27:2025-01-02T03:04:05.000006Z,11:admin:alice,3:cli,
               14:issuer_created,11:issuer:root,22:{"key_type":"ec-p256"},64:000…000,
               (one line without breaks; 000…000 is the 64 zeros of prev_hash)
    hash     = 8201f44a7aa4d3c9d18f150453a1c14fcb7442ef5a4852599cd5b378d6744d99

Checkpoint signature
--------------------
The audit key signs the 64-byte message ``b"privca-audit-checkpoint\\x00"`` ‖ seq as an unsigned
8-byte big-endian integer ‖ the 32 bytes of ``bytes.fromhex(hash)``, with the algorithm named in
the checkpoint row (``sha256WithRSAEncryption``/``sha384WithRSAEncryption``: PKCS#1 v1.5;
``ecdsa-with-SHA256``/``ecdsa-with-SHA384``: DER-encoded ECDSA; ``Ed25519``).

Details never carry secrets
---------------------------
Callers pass only fields that are safe for any auditor to read: names, serial numbers, key URIs,
reasons. Never a PIN, password, token, HMAC key or private key. `append()` refuses the usual
secret-bearing key names as a last line of defence, but that check is no substitute for care.

Export format
-------------
`export()` writes JSON lines, one object per entry in seq order with the keys ``seq``, ``at`` (as
above), ``actor``, ``channel``, ``action``, ``object``, ``details`` (the JSON object, to be
re-canonicalised as above), ``prev_hash`` and ``hash``; non-ASCII is written as ``\\uXXXX``.

Concurrency and cost
--------------------
`append()` runs inside the caller's transaction and serialises on the single ``audit_head`` row:
PostgreSQL locks it with ``SELECT … FOR UPDATE`` (the first append creates it; a second first
append waits on the primary key and then locks the winner's row), SQLite's writers already hold
the database lock from ``BEGIN IMMEDIATE``. An append is one SELECT, one INSERT and one UPDATE;
`append_many()` appends a group-commit batch's entries with the same three statements.
`verify()` reads pages of 1,000 rows from one snapshot: a million entries take 15 to 20 seconds
and no more memory than a thousand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ca.errors import CoreError
from ca.storage import Database, bulk
from ca.storage.models import AuditCheckpointRow, AuditEntryRow, AuditHeadRow
from hsm.public_key import signature_valid
from hsm.signer import Signer

__all__ = [
    "GENESIS_HASH",
    "AuditChainBroken",
    "AuditEntry",
    "Checkpoint",
    "NewEntry",
    "PublicKey",
    "VerifyResult",
    "append",
    "append_many",
    "canonical_details",
    "checkpoint_due",
    "checkpoint_message",
    "entry_hash",
    "export",
    "format_at",
    "iter_entries",
    "verify",
    "write_checkpoint",
]

GENESIS_HASH = "0" * 64
HASH_VERSION = "privca-audit-v1"
CHECKPOINT_PREFIX = b"privca-audit-checkpoint\x00"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

# The single audit_head row; locking it is what serialises appends on PostgreSQL.
_HEAD_ID = 1
# Rows per query when streaming; bounds memory whatever the length of the chain.
_BATCH_SIZE = 1000

# Column widths of audit_log: PostgreSQL enforces them and SQLite does not, so check here to
# behave the same on both.
_FIELD_LIMITS = {"actor": 256, "channel": 16, "action": 64, "object": 256}
# Key names that almost always hold a secret; refused anywhere inside `details`.
_SECRET_KEYS = frozenset(
    {
        "pin",
        "user_pin",
        "so_pin",
        "password",
        "passphrase",
        "secret",
        "client_secret",
        "token",
        "api_token",
        "bearer_token",
        "access_token",
        "private_key",
        "hmac_key",
        "eab_hmac_key",
    }
)

_ENTRY_COLUMNS = (
    AuditEntryRow.seq,
    AuditEntryRow.at,
    AuditEntryRow.actor,
    AuditEntryRow.channel,
    AuditEntryRow.action,
    AuditEntryRow.object,
    AuditEntryRow.details,
    AuditEntryRow.prev_hash,
    AuditEntryRow.hash,
)
_CHECKPOINT_COLUMNS = (
    AuditCheckpointRow.id,
    AuditCheckpointRow.seq,
    AuditCheckpointRow.hash,
    AuditCheckpointRow.at,
    AuditCheckpointRow.key_uri,
    AuditCheckpointRow.algorithm,
    AuditCheckpointRow.signature,
)


class AuditChainBroken(CoreError):
    """The stored chain does not verify, so the log refuses to sign a checkpoint over it."""

    kind = "audit_chain_broken"


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the log as stored; `details` is the parsed JSON object."""

    seq: int
    at: datetime
    actor: str
    channel: str
    action: str
    object: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready object (the export format, keys in field order)."""
        return {
            "seq": self.seq,
            "at": format_at(self.at),
            "actor": self.actor,
            "channel": self.channel,
            "action": self.action,
            "object": self.object,
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Checkpoint:
    """A stored signature by the audit key over (seq, hash) of an entry; `id` numbers it."""

    id: int
    seq: int
    hash: str
    at: datetime
    key_uri: str
    algorithm: str
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class VerifyResult:
    """What `verify()` found; `problem` names the first bad entry or checkpoint in a sentence.

    `entries_checked` and `checkpoints_checked` count what passed before the first problem.
    `first_bad_seq` is the first entry that is wrong or missing; for a checkpoint problem, the
    entry the checkpoint names (or the first missing one, for a truncated tail).
    """

    ok: bool
    entries_checked: int
    checkpoints_checked: int
    first_bad_seq: int | None = None
    problem: str | None = None


# -- the canonical form -------------------------------------------------------------------------


def format_at(at: datetime) -> str:
    """The entry time as hashed and exported: UTC, six fractional digits, ``Z``."""
    if at.tzinfo is not UTC:
        if at.tzinfo is None:
            raise ValueError("audit times must be timezone-aware")
        at = at.astimezone(UTC)
    return at.isoformat(timespec="microseconds")[:-6] + "Z"


def canonical_details(details: Mapping[str, Any]) -> str:
    """The canonical JSON text of `details` (module docstring); raises TypeError or ValueError."""
    if not isinstance(details, Mapping):
        raise TypeError("audit details must be a mapping")
    _check_json_value(details, "details")
    text = json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    _check_utf8(text, "details")
    return text


def entry_hash(
    *,
    seq: int,
    at: str,
    actor: str,
    channel: str,
    action: str,
    object: str,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 hex over the netstrings of the module docstring; `at` and `details` as text."""
    preimage = bytearray()
    for part in (HASH_VERSION, str(seq), at, actor, channel, action, object, details, prev_hash):
        data = part.encode("utf-8")
        preimage += b"%d:%b," % (len(data), data)
    return hashlib.sha256(preimage).hexdigest()


def checkpoint_message(seq: int, hash: str) -> bytes:
    """The 64 bytes the audit key signs for a checkpoint of entry `seq` with hash `hash`."""
    return CHECKPOINT_PREFIX + seq.to_bytes(8, "big") + bytes.fromhex(hash)


def _check_utf8(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: text is not valid Unicode (lone surrogate)") from None


# The exact types checked first: most details are plain strings, and isinstance() against a
# union is the slow part of the check.
_JSON_SCALARS = frozenset({str, int, bool})


def _check_json_value(value: Any, where: str) -> None:
    if value is None or type(value) in _JSON_SCALARS or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        raise TypeError(f"{where}: floats are not allowed in audit details; pass a string")
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if item is None or type(item) in _JSON_SCALARS:
                continue
            _check_json_value(item, f"{where}[{index}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be strings")
            if key.lower() in _SECRET_KEYS:
                raise ValueError(
                    f"{where}: key {key!r} looks like a secret; audit details are public"
                )
            if item is None or type(item) in _JSON_SCALARS:
                continue
            _check_json_value(item, f"{where}.{key}")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a JSON value")


def _check_field(name: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"audit {name} must be a string")
    if len(value) > _FIELD_LIMITS[name]:
        raise ValueError(f"audit {name} is longer than {_FIELD_LIMITS[name]} characters")
    if name != "object" and not value:
        raise ValueError(f"audit {name} must not be empty")
    if "\x00" in value:
        raise ValueError(f"audit {name} contains a NUL character")
    _check_utf8(value, f"audit {name}")


# -- appending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewEntry:
    """An entry to append: everything but the sequence number, time and hashes."""

    actor: str
    channel: str
    action: str
    object: str
    details: Mapping[str, Any]


def append(
    session: Session,
    database: Database,
    *,
    actor: str,
    channel: str,
    action: str,
    object: str,
    details: Mapping[str, Any],
) -> AuditEntry:
    """Append one entry inside the caller's transaction (from `database.write()`); never commits.

    The audit head stays locked until the caller's transaction ends, so call this as late in the
    transaction as possible. `details` must hold only fields safe for any auditor to read.
    Raises TypeError or ValueError for a field the log cannot store faithfully.
    """
    entry = NewEntry(actor=actor, channel=channel, action=action, object=object, details=details)
    return append_many(session, database, [entry])[0]


def append_many(
    session: Session, database: Database, entries: Sequence[NewEntry]
) -> list[AuditEntry]:
    """Append `entries` in order, as `append` would one by one, with one lock of the head, one
    INSERT and one head update; they share one time. Same rules and errors as `append`; nothing
    is written when one entry is refused."""
    texts = []
    for entry in entries:
        for name in ("actor", "channel", "action", "object"):
            _check_field(name, getattr(entry, name))
        texts.append(canonical_details(entry.details))
    if not entries:
        return []

    head_seq, head_hash = _lock_head(session, database)
    # Taken under the lock, so times never run backwards along the chain on one clock.
    at = datetime.now(UTC)
    at_text = format_at(at)
    rows = []
    appended = []
    prev_hash = head_hash
    for seq, (entry, details_text) in enumerate(zip(entries, texts, strict=True), head_seq + 1):
        digest = entry_hash(
            seq=seq,
            at=at_text,
            actor=entry.actor,
            channel=entry.channel,
            action=entry.action,
            object=entry.object,
            details=details_text,
            prev_hash=prev_hash,
        )
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": entry.actor,
                "channel": entry.channel,
                "action": entry.action,
                "object": entry.object,
                "details": details_text,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        appended.append(
            AuditEntry(
                seq=seq,
                at=at,
                actor=entry.actor,
                channel=entry.channel,
                action=entry.action,
                object=entry.object,
                details=json.loads(details_text),
                prev_hash=prev_hash,
                hash=digest,
            )
        )
        prev_hash = digest
    connection = session.connection()
    move = {"old_seq": head_seq, "seq": rows[-1]["seq"], "hash": prev_hash}
    if len(rows) == 1 and not bulk.driver_level(connection):
        connection.execute(_INSERT_ENTRY, rows[0])
        moved = connection.execute(_MOVE_HEAD, move).rowcount
    else:
        # One round trip where the engine allows: each costs the whole batch's wait.
        moved = bulk.insert_many_then(connection, AuditEntryRow.__table__, rows, _MOVE_HEAD, move)
    if moved != 1:
        # Only possible if the session did not hold the lock (not from Database.write()).
        raise RuntimeError(
            "audit head moved during append; append needs a Database.write() session"
        )
    return appended


# Statements built once: on the issuance hot path, building them costs more than running them.
_INSERT_ENTRY = insert(AuditEntryRow.__table__)
_MOVE_HEAD = (
    update(AuditHeadRow)
    .where(AuditHeadRow.id == _HEAD_ID, AuditHeadRow.seq == bindparam("old_seq"))
    .values(seq=bindparam("seq"), hash=bindparam("hash"))
)
_SELECT_HEAD = select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == _HEAD_ID)
_SELECT_HEAD_FOR_UPDATE = _SELECT_HEAD.with_for_update()


def _lock_head(session: Session, database: Database) -> tuple[int, str]:
    # Columns, not the mapped object: a long-lived session's identity map could hand back a
    # stale head from an earlier transaction.
    locked = _SELECT_HEAD if database.is_sqlite else _SELECT_HEAD_FOR_UPDATE
    head = bulk.execute_statement(session.connection(), locked).fetchone()
    if head is not None:
        return head[0], head[1]
    # First append ever (or the head row was lost): start from the chain's last entry. Two
    # PostgreSQL transactions may get here at once; the loser's INSERT waits for the winner's
    # commit, fails on the primary key, and the savepoint lets it carry on and lock the new row.
    last = session.execute(
        select(AuditEntryRow.seq, AuditEntryRow.hash).order_by(AuditEntryRow.seq.desc()).limit(1)
    ).first()
    seq, digest = (last.seq, last.hash) if last is not None else (0, GENESIS_HASH)
    try:
        with session.begin_nested():
            session.execute(insert(AuditHeadRow).values(id=_HEAD_ID, seq=seq, hash=digest))
    except IntegrityError:
        head = session.execute(locked).first()
        if head is None:
            raise
        return head.seq, head.hash
    return seq, digest


# -- reading ------------------------------------------------------------------------------------


@contextmanager
def _snapshot(database: Database) -> Iterator[Session]:
    """A read session whose queries all see one state of the database."""
    with database.read() as session:
        if not database.is_sqlite:
            # READ COMMITTED would let entries and checkpoints appended mid-read look like
            # tampering; SQLite's read transaction in WAL mode is a snapshot already.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session


def _entry_rows(session: Session, after_seq: int, until_seq: int | None = None) -> Iterator[Row]:
    # Keyset pages on the primary key: each page is one index range scan, memory stays bounded.
    while True:
        query = select(*_ENTRY_COLUMNS).where(AuditEntryRow.seq > after_seq)
        if until_seq is not None:
            query = query.where(AuditEntryRow.seq <= until_seq)
        rows = session.execute(query.order_by(AuditEntryRow.seq).limit(_BATCH_SIZE)).all()
        yield from rows
        if len(rows) < _BATCH_SIZE:
            return
        after_seq = rows[-1].seq


def _checkpoint_rows(session: Session) -> Iterator[Row]:
    after_seq, after_id = -(2**62), 0
    while True:
        rows = session.execute(
            select(*_CHECKPOINT_COLUMNS)
            .where(
                or_(
                    AuditCheckpointRow.seq > after_seq,
                    and_(AuditCheckpointRow.seq == after_seq, AuditCheckpointRow.id > after_id),
                )
            )
            .order_by(AuditCheckpointRow.seq, AuditCheckpointRow.id)
            .limit(_BATCH_SIZE)
        ).all()
        yield from rows
        if len(rows) < _BATCH_SIZE:
            return
        after_seq, after_id = rows[-1].seq, rows[-1].id


def _read_head(session: Session) -> Row | None:
    return session.execute(
        select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == _HEAD_ID)
    ).first()


def _entry_from_row(row: Row) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        channel=row.channel,
        action=row.action,
        object=row.object,
        details=json.loads(row.details),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def iter_entries(
    database: Database, since_seq: int = 0, limit: int | None = None
) -> Iterator[AuditEntry]:
    """Entries with seq > `since_seq` in seq order, at most `limit`; streamed page by page.

    Each page is read in its own short transaction, so a long listing never holds a snapshot.
    """
    if limit is not None and limit < 0:
        raise ValueError("limit must not be negative")
    after, remaining = since_seq, limit
    while remaining is None or remaining > 0:
        size = _BATCH_SIZE if remaining is None else min(_BATCH_SIZE, remaining)
        with database.read() as session:
            rows = session.execute(
                select(*_ENTRY_COLUMNS)
                .where(AuditEntryRow.seq > after)
                .order_by(AuditEntryRow.seq)
                .limit(size)
            ).all()
        for row in rows:
            yield _entry_from_row(row)
        if len(rows) < size:
            return
        after = rows[-1].seq
        if remaining is not None:
            remaining -= len(rows)


def export(database: Database, out: TextIO, *, since_seq: int = 0) -> int:
    """Write entries with seq > `since_seq` to `out` as JSON lines; return how many."""
    count = 0
    for entry in iter_entries(database, since_seq):
        out.write(json.dumps(entry.to_dict(), separators=(",", ":")))
        out.write("\n")
        count += 1
    return count


# -- verification -------------------------------------------------------------------------------


class _Broken(Exception):
    def __init__(self, seq: int | None, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


class _ChainWalk:
    """Checks entries one by one in seq order, starting after a known (seq, hash)."""

    def __init__(self, seq: int = 0, hash: str = GENESIS_HASH) -> None:
        self.seq = seq
        self.hash = hash
        self.checked = 0

    def check(self, row: Row) -> None:
        expected = self.seq + 1
        if row.seq != expected:
            missing = (
                f"entry {expected}"
                if row.seq == expected + 1
                else f"entries {expected} to {row.seq - 1}"
            )
            start = (
                f"the chain starts at entry {row.seq}"
                if self.seq == 0
                else f"sequence jumps from {self.seq} to {row.seq}"
            )
            raise _Broken(expected, f"{missing} missing: {start} (deleted?)")
        recomputed = entry_hash(
            seq=row.seq,
            at=format_at(row.at),
            actor=row.actor,
            channel=row.channel,
            action=row.action,
            object=row.object,
            details=row.details,
            prev_hash=row.prev_hash,
        )
        if recomputed != row.hash:
            raise _Broken(row.seq, f"entry {row.seq}: hash does not match its contents (edited?)")
        if row.prev_hash != self.hash:
            if row.seq == 1:
                raise _Broken(1, "entry 1: prev_hash is not 64 zeros (entries before it removed?)")
            raise _Broken(
                row.seq,
                f"entry {row.seq}: prev_hash does not match the hash of entry {row.seq - 1} "
                f"(inserted or reordered, or entry {row.seq - 1} rewritten?)",
            )
        if not _is_canonical_object(row.details):
            raise _Broken(row.seq, f"entry {row.seq}: details are not a canonical JSON object")
        self.seq, self.hash = row.seq, row.hash
        self.checked += 1


def _is_canonical_object(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and text == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def _key_lookup(
    public_keys: Mapping[str, PublicKey] | Callable[[str], PublicKey],
) -> Callable[[str], PublicKey | None]:
    cache: dict[str, PublicKey | None] = {}

    def lookup(key_uri: str) -> PublicKey | None:
        if key_uri not in cache:
            try:
                if isinstance(public_keys, Mapping):
                    cache[key_uri] = public_keys.get(key_uri)
                else:
                    cache[key_uri] = public_keys(key_uri)
            except KeyError:
                cache[key_uri] = None
        return cache[key_uri]

    return lookup


def _check_checkpoint_signature(row: Row, lookup: Callable[[str], PublicKey | None]) -> None:
    public_key = lookup(row.key_uri)
    if public_key is None:
        raise _Broken(row.seq, f"checkpoint {row.id}: no trusted public key for {row.key_uri}")
    try:
        message = checkpoint_message(row.seq, row.hash)
    except (ValueError, OverflowError):
        raise _Broken(row.seq, f"checkpoint {row.id}: malformed seq or hash") from None
    if not signature_valid(public_key, row.algorithm, bytes(row.signature), message):
        raise _Broken(row.seq, f"checkpoint {row.id}: signature does not verify")


def verify(
    database: Database,
    public_keys: Mapping[str, PublicKey] | Callable[[str], PublicKey],
    *,
    expect_seq: int = 0,
) -> VerifyResult:
    """Check the whole chain, every checkpoint and the head, streaming; stops at the first problem.

    `public_keys` gives the trusted audit public key for a checkpoint's key_uri (a mapping, or a
    callable that returns one or raises KeyError). `expect_seq` is an entry known from outside
    the database (an earlier export's last entry, a monitoring record): a chain that ends before
    it was cut, even if its newest checkpoints were deleted with the tail. Reads one consistent
    snapshot, so appends running meanwhile do not disturb it.
    """
    lookup = _key_lookup(public_keys)
    walk = _ChainWalk()
    checkpoints_checked = 0
    with _snapshot(database) as session:
        head = _read_head(session)
        checkpoints = _checkpoint_rows(session)
        checkpoint = next(checkpoints, None)
        try:
            for row in _entry_rows(session, 0):
                walk.check(row)
                while checkpoint is not None and checkpoint.seq <= row.seq:
                    _check_checkpoint_signature(checkpoint, lookup)
                    if checkpoint.seq != row.seq:
                        raise _Broken(
                            checkpoint.seq,
                            f"checkpoint {checkpoint.id} names entry {checkpoint.seq}, "
                            "which cannot exist",
                        )
                    if checkpoint.hash != row.hash:
                        raise _Broken(
                            row.seq,
                            f"checkpoint {checkpoint.id} signed entry {row.seq} with hash "
                            f"{checkpoint.hash[:16]}…, but the entry now has {row.hash[:16]}… "
                            "(chain rewritten?)",
                        )
                    checkpoints_checked += 1
                    checkpoint = next(checkpoints, None)
            if checkpoint is not None:
                _check_checkpoint_signature(checkpoint, lookup)
                ends = f"chain ends at entry {walk.seq}" if walk.seq else "chain has no entries"
                raise _Broken(
                    walk.seq + 1,
                    f"{ends} but checkpoint {checkpoint.id} signed entry {checkpoint.seq} "
                    "(truncated tail)",
                )
            if walk.seq < expect_seq:
                raise _Broken(
                    walk.seq + 1,
                    f"chain ends at entry {walk.seq} but entry {expect_seq} was known to exist "
                    "(truncated tail)",
                )
            _check_head(head, walk)
        except _Broken as broken:
            return VerifyResult(
                ok=False,
                entries_checked=walk.checked,
                checkpoints_checked=checkpoints_checked,
                first_bad_seq=broken.seq,
                problem=broken.problem,
            )
    return VerifyResult(
        ok=True, entries_checked=walk.checked, checkpoints_checked=checkpoints_checked
    )


def _check_head(head: Row | None, walk: _ChainWalk) -> None:
    if head is None:
        if walk.seq:
            raise _Broken(walk.seq, f"audit_head is missing but the chain ends at entry {walk.seq}")
        return
    if head.seq > walk.seq:
        raise _Broken(
            walk.seq + 1,
            f"audit_head names entry {head.seq} but the chain ends at entry {walk.seq} "
            "(truncated tail)",
        )
    if head.seq < walk.seq:
        raise _Broken(
            head.seq + 1,
            f"audit_head names entry {head.seq} but the chain continues to entry {walk.seq} "
            "(entries added without append, or audit_head rolled back)",
        )
    if head.hash != walk.hash:
        raise _Broken(
            head.seq,
            f"audit_head names entry {head.seq} with hash {head.hash[:16]}…, but the entry has "
            f"{walk.hash[:16]}…",
        )


# -- checkpoints --------------------------------------------------------------------------------


def _last_checkpoint(session: Session) -> Row | None:
    return session.execute(
        select(AuditCheckpointRow.seq, AuditCheckpointRow.hash, AuditCheckpointRow.at)
        .order_by(AuditCheckpointRow.seq.desc(), AuditCheckpointRow.id.desc())
        .limit(1)
    ).first()


def checkpoint_due(database: Database, *, every: int, interval_seconds: int) -> bool:
    """True when entries are unsigned and there are `every` of them or the oldest is that old."""
    if every < 1:
        raise ValueError("every must be at least 1")
    if interval_seconds < 0:
        raise ValueError("interval_seconds must not be negative")
    with database.read() as session:
        head = _read_head(session)
        if head is None:
            return False
        last = _last_checkpoint(session)
        signed = last.seq if last is not None else 0
        unsigned = head.seq - signed
        if unsigned <= 0:
            return False
        if unsigned >= every:
            return True
        oldest = session.execute(
            select(AuditEntryRow.at).where(AuditEntryRow.seq == signed + 1)
        ).scalar()
    if oldest is None:
        # The first unsigned entry is gone: let write_checkpoint() find and report it.
        return True
    return datetime.now(UTC) - oldest >= timedelta(seconds=interval_seconds)


def write_checkpoint(database: Database, signer: Signer) -> Checkpoint | None:
    """Sign (seq, hash) of the head with the audit key and store it; None if nothing is new.

    The entries since the previous checkpoint are verified first, so a checkpoint never vouches
    for a chain that was already tampered with; raises AuditChainBroken if they do not verify.
    The token signs outside any database transaction.
    """
    with _snapshot(database) as session:
        head = _read_head(session)
        if head is None or head.seq == 0:
            return None
        last = _last_checkpoint(session)
        if last is not None and last.seq >= head.seq:
            return None
        walk = _ChainWalk()
        if last is not None:
            anchor = session.execute(
                select(AuditEntryRow.hash).where(AuditEntryRow.seq == last.seq)
            ).scalar()
            if anchor != last.hash:
                raise AuditChainBroken(
                    f"audit entry {last.seq} no longer has the hash its last checkpoint signed"
                )
            walk = _ChainWalk(last.seq, last.hash)
        try:
            for row in _entry_rows(session, walk.seq, head.seq):
                walk.check(row)
            _check_head(head, walk)
        except _Broken as broken:
            raise AuditChainBroken(f"audit log does not verify: {broken.problem}") from None

    message = checkpoint_message(head.seq, head.hash)
    signature = signer.sign(message)
    if not signature_valid(signer.public_key, signer.algorithm, signature, message):
        raise AuditChainBroken(
            f"the audit key {signer.key_uri} returned a signature that does not verify"
        )

    at = datetime.now(UTC)
    with database.write() as session:
        # Serialises checkpoint writers with each other (and briefly with appends).
        session.execute(
            database.for_update(select(AuditHeadRow.seq).where(AuditHeadRow.id == _HEAD_ID))
        )
        latest = _last_checkpoint(session)
        if latest is not None and latest.seq >= head.seq:
            return None
        checkpoint_id = session.execute(
            insert(AuditCheckpointRow)
            .values(
                seq=head.seq,
                hash=head.hash,
                at=at,
                key_uri=signer.key_uri,
                algorithm=signer.algorithm,
                signature=signature,
            )
            .returning(AuditCheckpointRow.id)
        ).scalar_one()
    return Checkpoint(
        id=checkpoint_id,
        seq=head.seq,
        hash=head.hash,
        at=at,
        key_uri=signer.key_uri,
        algorithm=signer.algorithm,
        signature=signature,
    )
