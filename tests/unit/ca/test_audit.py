"""The audit log on SQLite and PostgreSQL: chaining, tamper detection, checkpoints, export, races.

Tampering is done the way an attacker with database access would do it: raw SQL through
SQLAlchemy, never through ca.audit. Hashes an attacker recomputes, and the export check, use an
independent implementation of the canonical form documented in ca/audit.py.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import multiprocessing
import re
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import bindparam, event, func, insert, select, text

from ca import audit
from ca.storage import Database
from ca.storage.models import AuditCheckpointRow, AuditEntryRow, AuditHeadRow, UTCDateTime
from tests.support.software_signer import SoftwareSigner

ZEROS = "0" * 64


# -- an independent implementation of the documented canonical form -----------------------------


def _netstring(value: str) -> bytes:
    data = value.encode("utf-8")
    return str(len(data)).encode("ascii") + b":" + data + b","


def independent_hash(record: dict[str, Any]) -> str:
    """The entry hash computed from an exported record, following only the module docstring."""
    details = json.dumps(
        record["details"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    parts = [
        "privca-audit-v1",
        str(record["seq"]),
        record["at"],
        record["actor"],
        record["channel"],
        record["action"],
        record["object"],
        details,
        record["prev_hash"],
    ]
    return hashlib.sha256(b"".join(_netstring(part) for part in parts)).hexdigest()


# -- helpers ------------------------------------------------------------------------------------


def append_entries(database: Database, count: int, *, actor: str = "admin:alice") -> None:
    for index in range(count):
        with database.write() as session:
            audit.append(
                session,
                database,
                actor=actor,
                channel="cli",
                action="certificate_issued",
                object=f"certificate:root:{index:x}",
                details={"serial": f"{index:x}", "sans": [f"dns:host{index}.example"]},
            )


def execute(database: Database, sql: str, **params: Any) -> None:
    """Raw SQL as an attacker would run it; `at` binds go through the column's type."""
    statement = text(sql)
    if "at" in params:
        statement = statement.bindparams(bindparam("at", type_=UTCDateTime()))
    with database.write() as session:
        session.execute(statement, params)


def exported(database: Database) -> list[dict[str, Any]]:
    out = io.StringIO()
    audit.export(database, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def entry_hash_of(database: Database, seq: int) -> str:
    with database.read() as session:
        query = select(AuditEntryRow.hash).where(AuditEntryRow.seq == seq)
        return session.execute(query).scalar_one()


def set_head(database: Database, seq: int) -> None:
    execute(
        database,
        "UPDATE audit_head SET seq = :seq, hash = :hash",
        seq=seq,
        hash=entry_hash_of(database, seq),
    )


def rewrite_from(database: Database, seq: int, **changes: Any) -> None:
    """Change entry `seq` and recompute its hash and every later link, then fix the head."""
    records = exported(database)
    prev_hash = records[seq - 2]["hash"] if seq > 1 else ZEROS
    for record in records[seq - 1 :]:
        if record["seq"] == seq:
            record.update(changes)
        record["prev_hash"] = prev_hash
        record["hash"] = independent_hash(record)
        execute(
            database,
            "UPDATE audit_log SET actor = :actor, prev_hash = :prev_hash, hash = :hash "
            "WHERE seq = :seq",
            actor=record["actor"],
            prev_hash=record["prev_hash"],
            hash=record["hash"],
            seq=record["seq"],
        )
        prev_hash = record["hash"]
    set_head(database, records[-1]["seq"])


def keys_for(*signers: SoftwareSigner) -> dict[str, Any]:
    return {signer.key_uri: signer.public_key for signer in signers}


def count_rows(database: Database, model: Any) -> int:
    with database.read() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


@pytest.fixture
def signer() -> SoftwareSigner:
    return SoftwareSigner("ec-p256", label="audit")


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Several pages even for short chains, so paging boundaries are exercised.
    monkeypatch.setattr(audit, "_BATCH_SIZE", 3)


# -- appending and verifying --------------------------------------------------------------------


def test_documented_worked_example_matches_the_independent_computation() -> None:
    record = {
        "seq": 1,
        "at": "2025-01-02T03:04:05.000006Z",
        "actor": "admin:alice",
        "channel": "cli",
        "action": "issuer_created",
        "object": "issuer:root",
        "details": {"key_type": "ec-p256"},
        "prev_hash": ZEROS,
    }
    expected = independent_hash(record)
    assert f"hash     = {expected}" in audit.__doc__
    assert audit.entry_hash(**{**record, "details": '{"key_type":"ec-p256"}'}) == expected


def test_appended_chain_verifies(database: Database, small_batches: None) -> None:
    append_entries(database, 10)

    result = audit.verify(database, {})

    assert result == audit.VerifyResult(ok=True, entries_checked=10, checkpoints_checked=0)
    records = exported(database)
    assert [r["seq"] for r in records] == list(range(1, 11))
    assert records[0]["prev_hash"] == ZEROS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(records))


def test_empty_log_verifies(database: Database) -> None:
    assert audit.verify(database, {}) == audit.VerifyResult(True, 0, 0)


def test_append_returns_the_stored_entry(database: Database) -> None:
    with database.write() as session:
        entry = audit.append(
            session,
            database,
            actor="acme:account/7",
            channel="acme",
            action="certificate_issued",
            object="certificate:root:1f",
            details={"z": 1, "a": ["x", None, True]},
        )

    [stored] = list(audit.iter_entries(database))
    assert stored == entry
    assert entry.seq == 1 and entry.prev_hash == ZEROS
    assert entry.at.tzinfo is not None and entry.at.utcoffset() == timedelta(0)
    assert entry.hash == independent_hash(entry.to_dict())
    with database.read() as session:
        details = session.execute(select(AuditEntryRow.details)).scalar_one()
    assert details == '{"a":["x",null,true],"z":1}'


def test_append_is_one_select_one_insert_one_update(database: Database) -> None:
    append_entries(database, 1)
    statements: list[str] = []
    with database.write() as session:
        connection = session.connection()
        event.listen(
            connection,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_rest: statements.append(statement),
        )
        audit.append(
            session, database, actor="a", channel="cli", action="x", object="o", details={}
        )
    verbs = [s.split()[0].upper() for s in statements]
    if database.is_sqlite:
        assert [v for v in verbs if v in {"SELECT", "INSERT", "UPDATE", "DELETE"}] == [
            "SELECT",
            "INSERT",
            "UPDATE",
        ]
    else:
        # PostgreSQL: the INSERT rides in the head UPDATE's WITH clause (one round trip).
        assert [v for v in verbs if v in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}] == [
            "SELECT",
            "WITH",
        ]
        assert "INSERT INTO audit_log" in statements[-1]
        assert "UPDATE audit_head" in statements[-1]


def test_append_belongs_to_the_callers_transaction(database: Database) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), database.write() as session:
        audit.append(
            session, database, actor="a", channel="cli", action="x", object="o", details={}
        )
        raise Boom

    assert count_rows(database, AuditEntryRow) == 0
    with database.write() as session:
        first = audit.append(
            session, database, actor="a", channel="cli", action="x", object="o", details={}
        )
        second = audit.append(
            session, database, actor="a", channel="cli", action="y", object="o", details={}
        )
    assert (first.seq, second.seq, second.prev_hash) == (1, 2, first.hash)
    assert audit.verify(database, {}).ok


def test_awkward_text_round_trips_and_verifies(database: Database) -> None:
    details = {
        "subject": 'CN=Zoë "quoted" \\ back\nslash',
        "controls": "\x01\x1f\x7f\u2028",
        "emoji": "🔐",
        "nested": {"b": [1, -2, 10**30], "a": {}},
    }
    with database.write() as session:
        audit.append(
            session,
            database,
            actor="admin:zoë\t",
            channel="cli",
            action="certificate_issued",
            object="",
            details=details,
        )

    [record] = exported(database)
    assert record["details"] == details
    assert independent_hash(record) == record["hash"]
    assert audit.verify(database, {}).ok


@pytest.mark.parametrize(
    ("details", "error"),
    [
        ({"ratio": 0.5}, TypeError),
        ({"when": datetime.now(UTC)}, TypeError),
        ({1: "x"}, TypeError),
        ({"eab": {"hmac_key": "c2VjcmV0"}}, ValueError),
        ({"items": [{"PIN": "1234"}]}, ValueError),
        ({"password": "x"}, ValueError),
        ({"text": "\ud800"}, ValueError),
    ],
)
def test_append_refuses_details_it_cannot_store_safely(
    database: Database, details: dict[Any, Any], error: type[Exception]
) -> None:
    with pytest.raises(error) as raised, database.write() as session:
        audit.append(
            session, database, actor="a", channel="cli", action="x", object="o", details=details
        )
    for secret in ("1234", "c2VjcmV0"):
        assert secret not in str(raised.value)
    assert count_rows(database, AuditEntryRow) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"actor": ""},
        {"actor": "a" * 257},
        {"channel": "c" * 17},
        {"action": "x" * 65},
        {"object": "o" * 257},
        {"object": "nul\x00"},
    ],
)
def test_append_refuses_fields_the_columns_cannot_hold(
    database: Database, fields: dict[str, str]
) -> None:
    values = {"actor": "a", "channel": "cli", "action": "x", "object": "o", **fields}
    with pytest.raises(ValueError), database.write() as session:
        audit.append(session, database, details={}, **values)
    assert count_rows(database, AuditEntryRow) == 0


# -- tampering ----------------------------------------------------------------------------------

EDITS = {
    "at": datetime(2001, 2, 3, 4, 5, 6, 7, tzinfo=UTC),
    "actor": "mallory",
    "channel": "evil",
    "action": "nothing_happened",
    "object": "certificate:root:0",
    "details": '{"serial":"0"}',
    "prev_hash": "f" * 64,
    "hash": "e" * 64,
}


@pytest.mark.parametrize(
    ("column", "seq"),
    [
        ("at", 1),
        ("actor", 6),
        ("channel", 10),
        ("action", 2),
        ("object", 9),
        ("details", 6),
        ("prev_hash", 1),
        ("prev_hash", 7),
        ("hash", 5),
        ("hash", 10),
    ],
)
def test_edited_field_is_detected_and_located(
    database: Database, small_batches: None, column: str, seq: int
) -> None:
    append_entries(database, 10)
    if column == "at":
        execute(database, "UPDATE audit_log SET at = :at WHERE seq = :seq", at=EDITS["at"], seq=seq)
    else:
        execute(
            database,
            f"UPDATE audit_log SET {column} = :value WHERE seq = :seq",
            value=EDITS[column],
            seq=seq,
        )

    result = audit.verify(database, {})

    assert not result.ok
    assert result.first_bad_seq == seq
    assert result.entries_checked == seq - 1
    assert result.problem == f"entry {seq}: hash does not match its contents (edited?)"


def test_entry_rewritten_with_a_fresh_hash_breaks_the_next_link(database: Database) -> None:
    append_entries(database, 10)
    record = exported(database)[4]
    record["actor"] = "mallory"
    execute(
        database,
        "UPDATE audit_log SET actor = 'mallory', hash = :hash WHERE seq = 5",
        hash=independent_hash(record),
    )

    result = audit.verify(database, {})

    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert result.problem.startswith("entry 6: prev_hash does not match the hash of entry 5")


def test_deleted_middle_entry_is_detected(database: Database, small_batches: None) -> None:
    append_entries(database, 10)
    execute(database, "DELETE FROM audit_log WHERE seq = 5")

    result = audit.verify(database, {})

    assert (result.ok, result.first_bad_seq, result.entries_checked) == (False, 5, 4)
    assert result.problem == "entry 5 missing: sequence jumps from 4 to 6 (deleted?)"


def test_deleted_run_and_deleted_first_entry_are_detected(database: Database) -> None:
    append_entries(database, 10)
    execute(database, "DELETE FROM audit_log WHERE seq BETWEEN 4 AND 6")
    result = audit.verify(database, {})
    assert result.problem == "entries 4 to 6 missing: sequence jumps from 3 to 7 (deleted?)"

    execute(database, "DELETE FROM audit_log WHERE seq = 1")
    result = audit.verify(database, {})
    assert (result.first_bad_seq, result.entries_checked) == (1, 0)
    assert result.problem == "entry 1 missing: the chain starts at entry 2 (deleted?)"


def test_inserted_entry_is_detected(database: Database) -> None:
    append_entries(database, 8)
    # Make room at seq 5 (two steps: PostgreSQL checks the key row by row), then insert a
    # forged entry that is internally consistent and links to entry 4.
    execute(database, "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 5")
    execute(database, "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000")
    forged = {
        "seq": 5,
        "at": "2025-01-01T00:00:00.000000Z",
        "actor": "mallory",
        "channel": "cli",
        "action": "nothing_happened",
        "object": "",
        "details": {},
        "prev_hash": entry_hash_of(database, 4),
    }
    execute(
        database,
        "INSERT INTO audit_log (seq, at, actor, channel, action, object, details, prev_hash, "
        "hash) VALUES (5, :at, 'mallory', 'cli', 'nothing_happened', '', '{}', :prev, :hash)",
        at=datetime(2025, 1, 1, tzinfo=UTC),
        prev=forged["prev_hash"],
        hash=independent_hash(forged),
    )
    set_head(database, 9)

    result = audit.verify(database, {})

    assert (result.ok, result.first_bad_seq, result.entries_checked) == (False, 6, 5)
    assert result.problem == "entry 6: hash does not match its contents (edited?)"


def test_entry_inserted_after_the_tail_is_detected(database: Database) -> None:
    append_entries(database, 4)
    forged = {
        "seq": 5,
        "at": "2025-01-01T00:00:00.000000Z",
        "actor": "mallory",
        "channel": "cli",
        "action": "nothing_happened",
        "object": "",
        "details": {},
        "prev_hash": entry_hash_of(database, 4),
    }
    execute(
        database,
        "INSERT INTO audit_log (seq, at, actor, channel, action, object, details, prev_hash, "
        "hash) VALUES (5, :at, 'mallory', 'cli', 'nothing_happened', '', '{}', :prev, :hash)",
        at=datetime(2025, 1, 1, tzinfo=UTC),
        prev=forged["prev_hash"],
        hash=independent_hash(forged),
    )

    result = audit.verify(database, {})

    assert (result.ok, result.first_bad_seq, result.entries_checked) == (False, 5, 5)
    assert result.problem.startswith("audit_head names entry 4 but the chain continues to entry 5")


def test_swapped_entries_are_detected(database: Database, small_batches: None) -> None:
    append_entries(database, 10)
    execute(database, "UPDATE audit_log SET seq = 1003 WHERE seq = 3")
    execute(database, "UPDATE audit_log SET seq = 3 WHERE seq = 7")
    execute(database, "UPDATE audit_log SET seq = 7 WHERE seq = 1003")

    result = audit.verify(database, {})

    assert (result.ok, result.first_bad_seq, result.entries_checked) == (False, 3, 2)
    assert result.problem == "entry 3: hash does not match its contents (edited?)"


def test_non_canonical_details_are_detected_even_with_a_fresh_hash(database: Database) -> None:
    append_entries(database, 3)
    record = exported(database)[2]
    details = '{"sans":["dns:host2.example"], "serial":"2"}'
    # The hash must cover the stored text; recompute it over the non-canonical text.
    parts = [
        "privca-audit-v1",
        "3",
        record["at"],
        record["actor"],
        record["channel"],
        record["action"],
        record["object"],
        details,
        record["prev_hash"],
    ]
    forged_hash = hashlib.sha256(b"".join(_netstring(p) for p in parts)).hexdigest()
    execute(
        database,
        "UPDATE audit_log SET details = :d, hash = :h WHERE seq = 3",
        d=details,
        h=forged_hash,
    )
    execute(database, "UPDATE audit_head SET hash = :h", h=forged_hash)

    result = audit.verify(database, {})

    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert result.problem == "entry 3: details are not a canonical JSON object"


def test_head_mismatch_is_detected(database: Database) -> None:
    append_entries(database, 10)
    good = entry_hash_of(database, 10)

    execute(database, "UPDATE audit_head SET hash = :h", h="a" * 64)
    result = audit.verify(database, {})
    assert (result.ok, result.first_bad_seq, result.entries_checked) == (False, 10, 10)
    assert result.problem == (
        f"audit_head names entry 10 with hash {'a' * 16}…, but the entry has {good[:16]}…"
    )

    execute(database, "UPDATE audit_head SET seq = 12, hash = :h", h=good)
    result = audit.verify(database, {})
    assert (result.ok, result.first_bad_seq) == (False, 11)
    assert result.problem == (
        "audit_head names entry 12 but the chain ends at entry 10 (truncated tail)"
    )

    execute(database, "DELETE FROM audit_head")
    result = audit.verify(database, {})
    assert (result.ok, result.problem) == (
        False,
        "audit_head is missing but the chain ends at entry 10",
    )


def test_append_after_a_lost_head_continues_the_chain(database: Database) -> None:
    append_entries(database, 3)
    execute(database, "DELETE FROM audit_head")

    append_entries(database, 2)

    assert [e.seq for e in audit.iter_entries(database)] == [1, 2, 3, 4, 5]
    assert audit.verify(database, {}).ok


# -- checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_checkpoints_sign_the_head_and_verify(database: Database, key_type: str) -> None:
    signer = SoftwareSigner(key_type, label=f"audit-{key_type}")
    assert audit.write_checkpoint(database, signer) is None

    append_entries(database, 5)
    first = audit.write_checkpoint(database, signer)
    assert first is not None
    assert (first.seq, first.hash, first.algorithm, first.key_uri) == (
        5,
        entry_hash_of(database, 5),
        signer.algorithm,
        signer.key_uri,
    )
    assert audit.write_checkpoint(database, signer) is None

    append_entries(database, 3)
    second = audit.write_checkpoint(database, signer)
    assert second is not None and (second.seq, second.id) == (8, first.id + 1)

    result = audit.verify(database, lambda uri: keys_for(signer)[uri])
    assert result == audit.VerifyResult(ok=True, entries_checked=8, checkpoints_checked=2)
    message = b"privca-audit-checkpoint\x00" + (8).to_bytes(8, "big") + bytes.fromhex(second.hash)
    assert audit.checkpoint_message(8, second.hash) == message


def test_checkpoint_due_counts_unsigned_entries_and_their_age(
    database: Database, signer: SoftwareSigner
) -> None:
    assert not audit.checkpoint_due(database, every=1, interval_seconds=0)
    append_entries(database, 2)
    assert not audit.checkpoint_due(database, every=3, interval_seconds=3600)
    assert audit.checkpoint_due(database, every=3, interval_seconds=0)
    append_entries(database, 1)
    assert audit.checkpoint_due(database, every=3, interval_seconds=3600)

    audit.write_checkpoint(database, signer)
    assert not audit.checkpoint_due(database, every=1, interval_seconds=0)
    append_entries(database, 1)
    assert audit.checkpoint_due(database, every=1, interval_seconds=3600)
    assert not audit.checkpoint_due(database, every=2, interval_seconds=3600)
    # The oldest unsigned entry is an hour and a minute old.
    execute(
        database,
        "UPDATE audit_log SET at = :at WHERE seq = 4",
        at=datetime.now(UTC) - timedelta(seconds=3660),
    )
    assert audit.checkpoint_due(database, every=2, interval_seconds=3600)


def test_truncated_tail_behind_a_checkpoint_is_detected(
    database: Database, signer: SoftwareSigner, small_batches: None
) -> None:
    append_entries(database, 10)
    audit.write_checkpoint(database, signer)
    execute(database, "DELETE FROM audit_log WHERE seq > 7")
    set_head(database, 7)

    result = audit.verify(database, keys_for(signer))

    assert (result.ok, result.first_bad_seq, result.entries_checked) == (False, 8, 7)
    assert result.problem == (
        "chain ends at entry 7 but checkpoint 1 signed entry 10 (truncated tail)"
    )

    execute(database, "DELETE FROM audit_log")
    execute(database, "DELETE FROM audit_head")
    result = audit.verify(database, keys_for(signer))
    assert result.problem == (
        "chain has no entries but checkpoint 1 signed entry 10 (truncated tail)"
    )


def test_truncation_after_the_last_checkpoint_is_only_caught_by_the_head(
    database: Database, signer: SoftwareSigner
) -> None:
    # Documented limit: unsigned entries after the last checkpoint are protected by audit_head
    # alone; an attacker who deletes them and fixes audit_head goes unnoticed.
    append_entries(database, 5)
    audit.write_checkpoint(database, signer)
    append_entries(database, 5)
    execute(database, "DELETE FROM audit_log WHERE seq > 7")

    result = audit.verify(database, keys_for(signer))
    assert (result.ok, result.first_bad_seq) == (False, 8)
    assert result.problem == (
        "audit_head names entry 10 but the chain ends at entry 7 (truncated tail)"
    )

    set_head(database, 7)
    assert audit.verify(database, keys_for(signer)) == audit.VerifyResult(True, 7, 1)


def test_chain_rewritten_behind_a_checkpoint_is_detected(
    database: Database, signer: SoftwareSigner
) -> None:
    append_entries(database, 10)
    rewrite_from(database, 4, actor="mallory")
    # Without a checkpoint a full rewrite is undetectable: that is what checkpoints are for.
    assert audit.verify(database, {}).ok

    append_entries(database, 2)
    audit.write_checkpoint(database, signer)
    rewrite_from(database, 11, actor="mallory")

    result = audit.verify(database, keys_for(signer))
    assert (result.ok, result.first_bad_seq, result.entries_checked) == (False, 12, 12)
    assert re.fullmatch(
        r"checkpoint 1 signed entry 12 with hash [0-9a-f]{16}…, but the entry now has "
        r"[0-9a-f]{16}… \(chain rewritten\?\)",
        result.problem,
    )


@pytest.mark.parametrize("forgery", ["flipped_bit", "other_key", "moved", "future"])
def test_forged_checkpoint_is_detected(
    database: Database, signer: SoftwareSigner, forgery: str
) -> None:
    append_entries(database, 10)
    checkpoint = audit.write_checkpoint(database, signer)
    assert checkpoint is not None
    expected_id, expected_seq = 1, 10
    if forgery == "flipped_bit":
        signature = bytearray(checkpoint.signature)
        signature[-1] ^= 1
        execute(database, "UPDATE audit_checkpoints SET signature = :s", s=bytes(signature))
    elif forgery == "other_key":
        impostor = SoftwareSigner("ec-p256", label="audit")
        execute(
            database,
            "UPDATE audit_checkpoints SET signature = :s",
            s=impostor.sign(audit.checkpoint_message(10, checkpoint.hash)),
        )
    elif forgery == "moved":
        execute(
            database,
            "UPDATE audit_checkpoints SET seq = 3, hash = :h",
            h=entry_hash_of(database, 3),
        )
        expected_seq = 3
    else:
        impostor = SoftwareSigner("ec-p256", label="audit")
        forged_hash = "ab" * 32
        with database.write() as session:
            session.execute(
                insert(AuditCheckpointRow).values(
                    seq=50,
                    hash=forged_hash,
                    at=datetime.now(UTC),
                    key_uri=signer.key_uri,
                    algorithm=signer.algorithm,
                    signature=impostor.sign(audit.checkpoint_message(50, forged_hash)),
                )
            )
        expected_id, expected_seq = 2, 50

    result = audit.verify(database, keys_for(signer))

    assert (result.ok, result.first_bad_seq) == (False, expected_seq)
    assert result.problem == f"checkpoint {expected_id}: signature does not verify"


def test_checkpoint_by_an_unknown_key_fails_verification(
    database: Database, signer: SoftwareSigner
) -> None:
    append_entries(database, 2)
    audit.write_checkpoint(database, signer)

    result = audit.verify(database, {})

    assert not result.ok
    assert result.problem == "checkpoint 1: no trusted public key for software:audit"
    other = SoftwareSigner("ed25519", label="other")
    result = audit.verify(database, {signer.key_uri: other.public_key})
    assert result.problem == "checkpoint 1: signature does not verify"


def test_write_checkpoint_refuses_to_sign_a_tampered_chain(
    database: Database, signer: SoftwareSigner
) -> None:
    append_entries(database, 5)
    execute(database, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")

    with pytest.raises(audit.AuditChainBroken, match="entry 3: hash does not match"):
        audit.write_checkpoint(database, signer)
    assert count_rows(database, AuditCheckpointRow) == 0


def test_write_checkpoint_refuses_when_the_checkpointed_entry_changed(
    database: Database, signer: SoftwareSigner
) -> None:
    append_entries(database, 5)
    audit.write_checkpoint(database, signer)
    append_entries(database, 2)
    rewrite_from(database, 5, actor="mallory")

    with pytest.raises(audit.AuditChainBroken, match="entry 5 no longer has the hash"):
        audit.write_checkpoint(database, signer)
    assert count_rows(database, AuditCheckpointRow) == 1


# -- reading and export -------------------------------------------------------------------------


def test_export_writes_json_lines_that_reverify_independently(
    database: Database, signer: SoftwareSigner, small_batches: None
) -> None:
    append_entries(database, 7)
    with database.write() as session:
        audit.append(
            session,
            database,
            actor="est:device-ü",
            channel="est",
            action="issuance_denied",
            object="profile:iot",
            details={"violations": [{"detail": "SAN\nnot allowed", "identifier": None}]},
        )
    audit.write_checkpoint(database, signer)

    out = io.StringIO()
    count = audit.export(database, out)

    lines = out.getvalue().splitlines()
    assert count == len(lines) == 8
    records = [json.loads(line) for line in lines]
    assert set(records[0]) == {
        "seq",
        "at",
        "actor",
        "channel",
        "action",
        "object",
        "details",
        "prev_hash",
        "hash",
    }
    prev = ZEROS
    for expected_seq, record in enumerate(records, start=1):
        assert record["seq"] == expected_seq
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", record["at"])
        assert record["prev_hash"] == prev
        assert independent_hash(record) == record["hash"]
        prev = record["hash"]
    # The last checkpoint vouches for the exported tail.
    with database.read() as session:
        row = session.execute(select(AuditCheckpointRow)).scalar_one()
    message = b"privca-audit-checkpoint\x00" + row.seq.to_bytes(8, "big") + bytes.fromhex(prev)
    signer.public_key.verify(row.signature, message, ec.ECDSA(hashes.SHA256()))

    tail = io.StringIO()
    assert audit.export(database, tail, since_seq=5) == 3
    assert [json.loads(line)["seq"] for line in tail.getvalue().splitlines()] == [6, 7, 8]


def test_iter_entries_pages_with_since_and_limit(database: Database, small_batches: None) -> None:
    append_entries(database, 10)

    assert [e.seq for e in audit.iter_entries(database)] == list(range(1, 11))
    assert [e.seq for e in audit.iter_entries(database, since_seq=4, limit=5)] == [5, 6, 7, 8, 9]
    assert [e.seq for e in audit.iter_entries(database, since_seq=8, limit=5)] == [9, 10]
    assert list(audit.iter_entries(database, limit=0)) == []
    assert list(audit.iter_entries(database, since_seq=10)) == []
    entry = next(audit.iter_entries(database, since_seq=2))
    assert entry.details == {"serial": "2", "sans": ["dns:host2.example"]}


# -- concurrency --------------------------------------------------------------------------------


def test_concurrent_appends_from_threads_form_one_gap_free_chain(database: Database) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(append_entries, database, 50, actor=f"thread-{n}") for n in range(4)]
        for future in futures:
            future.result(timeout=120)

    entries = list(audit.iter_entries(database))
    assert [e.seq for e in entries] == list(range(1, 201))
    assert {e.actor: sum(x.actor == e.actor for x in entries) for e in entries} == {
        f"thread-{n}": 50 for n in range(4)
    }
    assert audit.verify(database, {}) == audit.VerifyResult(True, 200, 0)


def _append_in_process(url: str, worker: int, count: int, start: Any) -> None:
    database = Database(url)
    try:
        if not start.wait(60):
            raise RuntimeError("start signal never came")
        append_entries(database, count, actor=f"process-{worker}")
    finally:
        database.dispose()


def test_concurrent_appends_from_processes_form_one_gap_free_chain(
    database: Database, database_url: str
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    processes = [
        context.Process(target=_append_in_process, args=(database_url, n, 50, start))
        for n in range(2)
    ]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=180)
        if process.is_alive():
            process.kill()
        assert process.exitcode == 0

    entries = list(audit.iter_entries(database))
    assert [e.seq for e in entries] == list(range(1, 101))
    assert sorted(e.actor for e in entries) == ["process-0"] * 50 + ["process-1"] * 50
    assert audit.verify(database, {}) == audit.VerifyResult(True, 100, 0)


def test_verify_reads_one_snapshot_while_appends_and_checkpoints_continue(
    database: Database,
    signer: SoftwareSigner,
    small_batches: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    append_entries(database, 10)
    pages = audit._entry_rows

    written: list[bool] = []

    def pages_with_writes_midway(session: Any, *args: Any, **kwargs: Any) -> Any:
        for index, row in enumerate(pages(session, *args, **kwargs)):
            if index == 4 and not written:
                written.append(True)
                # Committed by other sessions while verify is between pages.
                append_entries(database, 2)
                audit.write_checkpoint(database, signer)
            yield row

    monkeypatch.setattr(audit, "_entry_rows", pages_with_writes_midway)
    result = audit.verify(database, keys_for(signer))
    monkeypatch.undo()

    assert result == audit.VerifyResult(True, 10, 0)
    assert audit.verify(database, keys_for(signer)) == audit.VerifyResult(True, 12, 1)


def test_first_append_race_creates_one_head(database: Database) -> None:
    # Two transactions both find no audit_head; the second must wait for the first and then
    # append after it, not fail or fork the chain.
    second_done = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with database.write() as session:
                audit.append(
                    session,
                    database,
                    actor="second",
                    channel="cli",
                    action="x",
                    object="o",
                    details={},
                )
        except BaseException as exc:  # handed to the main thread's assertion
            errors.append(exc)
        finally:
            second_done.set()

    with database.write() as session:
        audit.append(
            session, database, actor="first", channel="cli", action="x", object="o", details={}
        )
        thread = threading.Thread(target=second)
        thread.start()
        if not database.is_sqlite:
            _wait_for_a_blocked_lock(database)
    thread.join(timeout=60)

    assert second_done.is_set() and not errors
    assert [(e.seq, e.actor) for e in audit.iter_entries(database)] == [
        (1, "first"),
        (2, "second"),
    ]
    assert count_rows(database, AuditHeadRow) == 1
    assert audit.verify(database, {}).ok


def _wait_for_a_blocked_lock(database: Database) -> None:
    deadline = time.monotonic() + 30
    with database.engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text("SELECT count(*) FROM pg_locks WHERE NOT granted")
            ).scalar_one()
            connection.rollback()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the second append never waited for the first")


# -- size ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_verify_streams_a_long_chain_in_bounded_memory(database: Database) -> None:
    total = 50_000
    at = datetime(2025, 1, 1, tzinfo=UTC)
    at_text = audit.format_at(at)
    prev = ZEROS
    with database.write() as session:
        for start in range(1, total + 1, 10_000):
            rows = []
            for seq in range(start, start + 10_000):
                details = f'{{"serial":"{seq:x}"}}'
                digest = audit.entry_hash(
                    seq=seq,
                    at=at_text,
                    actor="bulk",
                    channel="cli",
                    action="certificate_issued",
                    object=f"certificate:root:{seq:x}",
                    details=details,
                    prev_hash=prev,
                )
                rows.append(
                    {
                        "seq": seq,
                        "at": at,
                        "actor": "bulk",
                        "channel": "cli",
                        "action": "certificate_issued",
                        "object": f"certificate:root:{seq:x}",
                        "details": details,
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                prev = digest
            session.execute(insert(AuditEntryRow), rows)
        session.execute(insert(AuditHeadRow).values(id=1, seq=total, hash=prev))

    tracemalloc.start()
    try:
        result = audit.verify(database, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result == audit.VerifyResult(True, total, 0)
    # Holding all 50,000 rows takes about 45 MiB here; a page of 1,000 rows about 1 MiB.
    assert peak < 16 * 1024 * 1024


def test_a_tail_cut_with_its_checkpoints_is_caught_by_an_entry_known_from_outside(database):
    signer = SoftwareSigner("ec-p256", "audit")
    keys = {signer.key_uri: signer.public_key}
    for i in range(5):
        with database.write() as session:
            audit.append(
                session, database, actor="t", channel="cli", action="a", object=f"o{i}", details={}
            )
    audit.write_checkpoint(database, signer)
    for i in range(5):
        with database.write() as session:
            audit.append(
                session, database, actor="t", channel="cli", action="b", object=f"p{i}", details={}
            )
    assert audit.write_checkpoint(database, signer) is not None
    with database.write() as session:  # the attacker: newest checkpoint, tail, and the head
        session.execute(text("DELETE FROM audit_checkpoints WHERE seq = 10"))
        session.execute(text("DELETE FROM audit_log WHERE seq > 5"))
        session.execute(
            text("UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit_log WHERE seq = 5)")
        )
    assert audit.verify(database, keys).ok  # undetectable from inside the database alone
    result = audit.verify(database, keys, expect_seq=10)
    assert not result.ok and "entry 10 was known to exist" in result.problem


def test_append_many_chains_a_batch_that_round_trips_and_verifies(database: Database) -> None:
    append_entries(database, 2)
    batch = [
        audit.NewEntry(
            actor=f"acme:account/{i}",
            channel="acme",
            action="certificate_issued",
            object=f"certificate:issuing:{i:x}",
            details={"serial": f"{i:x}", "owner": None, "subject": "CN=Zoë 🔐", "sans": ["dns:a"]},
        )
        for i in range(5)
    ]
    with database.write() as session:
        appended = audit.append_many(session, database, batch)
    stored = list(audit.iter_entries(database))
    assert stored[2:] == appended
    assert [e.seq for e in appended] == [3, 4, 5, 6, 7]
    assert appended[0].prev_hash == stored[1].hash
    assert all(e.hash == independent_hash(e.to_dict()) for e in appended)
    assert audit.verify(database, {}).ok


def test_append_many_is_one_select_one_insert_one_update(database: Database) -> None:
    append_entries(database, 1)
    statements: list[str] = []
    entries = [audit.NewEntry("a", "cli", "x", "o", {"n": i}) for i in range(4)]
    with database.write() as session:
        connection = session.connection()
        event.listen(
            connection,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_rest: statements.append(statement),
        )
        audit.append_many(session, database, entries)
    verbs = [s.split()[0].upper() for s in statements]
    if database.is_sqlite:
        assert [v for v in verbs if v in {"SELECT", "INSERT", "UPDATE", "DELETE"}] == [
            "SELECT",
            "INSERT",
            "UPDATE",
        ]
    else:
        # PostgreSQL: the INSERT rides in the head UPDATE's WITH clause (one round trip).
        assert [v for v in verbs if v in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}] == [
            "SELECT",
            "WITH",
        ]
        assert "INSERT INTO audit_log" in statements[-1]
        assert "UPDATE audit_head" in statements[-1]
    assert count_rows(database, AuditEntryRow) == 5


def test_append_many_writes_nothing_when_one_entry_is_refused(database: Database) -> None:
    entries = [
        audit.NewEntry("a", "cli", "x", "o", {}),
        audit.NewEntry("a", "cli", "x", "o", {"password": "hunter2"}),
    ]
    with pytest.raises(ValueError), database.write() as session:
        audit.append_many(session, database, entries)
    assert count_rows(database, AuditEntryRow) == 0
