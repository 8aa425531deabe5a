"""Set-based writes of a group-commit batch (ca.storage.bulk, the certificate repository) on
both engines: the rows written are the rows given, ids come back in the order given, and a row
that is no longer pending fails the whole batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from ca.storage import certificates as certificate_store
from ca.storage.models import CertificateRow, IssuerRow


@pytest.fixture
def migrated(database):
    database.upgrade()
    now = datetime.now(UTC)
    with database.write() as session:
        session.execute(
            insert(IssuerRow).values(
                id=1, name="issuing", key_uri="pkcs11:object=x", key_type="ec-p256", created_at=now
            )
        )
    return database


def pending(serial: int, owner: str | None = None) -> certificate_store.PendingCertificate:
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return certificate_store.PendingCertificate(
        issuer_id=1,
        serial=serial,
        tbs_sha256=serial.to_bytes(32, "big"),
        subject=f"CN=host{serial}.example.test,O=Zoë 🔐",
        sans=[f"dns:host{serial}.example.test"],
        profile="tls-server",
        channel="acme",
        requester="acme:account/1",
        owner=owner,
        public_key_sha256=f"{serial:064x}",
        not_before=start,
        not_after=start + timedelta(days=90, microseconds=serial % 999_983),
    )


def test_insert_pending_many_returns_each_rows_id_in_the_order_given(migrated):
    now = datetime.now(UTC)
    serials = [0x7F3A, 0x12, 0xFFFF_FFFF_FFFF_FFFF_FFFF, 0x99, 0x5]
    with migrated.write() as session:
        ids = certificate_store.insert_pending_many(
            session, [(pending(s, owner=None if s % 2 else "team"), now) for s in serials]
        )
    with migrated.read() as session:
        rows = {row.id: row for row in session.scalars(select(CertificateRow))}
    assert [rows[i].serial for i in ids] == [certificate_store.serial_hex(s) for s in serials]
    for row_id, serial in zip(ids, serials, strict=True):
        row = rows[row_id]
        expected = pending(serial, owner=None if serial % 2 else "team")
        assert (row.status, row.der, row.owner) == ("pending", None, expected.owner)
        assert row.tbs_sha256 == expected.tbs_sha256 and row.subject == expected.subject
        assert (row.not_before, row.not_after) == (expected.not_before, expected.not_after)
        assert row.created_at == now


def test_a_duplicate_serial_fails_the_whole_batch(migrated):
    now = datetime.now(UTC)
    with migrated.write() as session:
        certificate_store.insert_pending(session, pending(0x42), now)
    with pytest.raises(IntegrityError), migrated.write() as session:
        certificate_store.insert_pending_many(session, [(pending(0x41), now), (pending(0x42), now)])
    with migrated.read() as session:
        assert list(session.scalars(select(CertificateRow.serial))) == ["42"]


def test_mark_issued_many_issues_every_row_or_refuses_the_batch(migrated):
    now = datetime.now(UTC)
    with migrated.write() as session:
        ids = certificate_store.insert_pending_many(session, [(pending(s), now) for s in (1, 2, 3)])
    later = now + timedelta(seconds=1)
    with migrated.write() as session:
        certificate_store.mark_issued_many(
            session,
            [(ids[0], b"\x30\x00first", "aa" * 32, later), (ids[1], b"\x00", "bb" * 32, later)],
        )
    with pytest.raises(RuntimeError), migrated.write() as session:
        # ids[0] is issued already: nothing of this batch may stay.
        certificate_store.mark_issued_many(
            session, [(ids[2], b"third", "cc" * 32, later), (ids[0], b"again", "dd" * 32, later)]
        )
    with migrated.read() as session:
        rows = {row.id: row for row in session.scalars(select(CertificateRow))}
    assert (rows[ids[0]].status, rows[ids[0]].der) == ("issued", b"\x30\x00first")
    assert (rows[ids[1]].fingerprint_sha256, rows[ids[1]].issued_at) == ("bb" * 32, later)
    assert (rows[ids[2]].status, rows[ids[2]].der) == ("pending", None)


def test_a_single_duplicate_serial_is_an_integrity_error_and_the_session_carries_on(migrated):
    # On PostgreSQL a single row goes below SQLAlchemy too: its errors must still be
    # SQLAlchemy's (the pipeline retries a serial on IntegrityError) and leave the
    # transaction usable after its savepoint is rolled back.
    now = datetime.now(UTC)
    with migrated.write() as session:
        certificate_store.insert_pending(session, pending(0x42), now)
    with migrated.write() as session:
        with pytest.raises(IntegrityError), session.begin_nested():
            certificate_store.insert_pending(session, pending(0x42), now)
        row_id = certificate_store.insert_pending(session, pending(0x43), now)
        certificate_store.mark_issued(session, row_id, b"\x30\x00", "ee" * 32, now)
        with pytest.raises(RuntimeError):
            certificate_store.mark_issued(session, row_id, b"\x30\x00", "ee" * 32, now)
    with migrated.read() as session:
        rows = {row.serial: row for row in session.scalars(select(CertificateRow))}
    assert set(rows) == {"42", "43"}
    assert (rows["43"].status, rows["43"].der, rows["43"].issued_at) == ("issued", b"\x30\x00", now)
    assert rows["43"].not_after == pending(0x43).not_after


def test_statements_below_sqlalchemy_still_reach_statement_listeners(migrated):
    from sqlalchemy import event

    seen: list[str] = []
    with migrated.write() as session:
        connection = session.connection()
        event.listen(
            connection,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_rest: seen.append(statement.split()[0].upper()),
        )
        certificate_store.insert_pending(session, pending(0x7), datetime.now(UTC))
    assert "INSERT" in seen


def test_fetch_rows_reads_what_sqlalchemy_reads_with_result_types_applied(migrated):
    from sqlalchemy import bindparam, update

    from ca.storage import bulk

    now = datetime.now(UTC)
    with migrated.write() as session:
        ids = certificate_store.insert_pending_many(
            session, [(pending(s), now) for s in (0x31, 0x32)]
        )
    table = CertificateRow.__table__
    query = (
        select(table.c.id, table.c.serial, table.c.not_after, table.c.issued_at, table.c.tbs_sha256)
        .where(table.c.id >= bindparam("first"))
        .order_by(table.c.id)
    )
    returning = (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values(status_changed_at=bindparam("at"))
        .returning(table.c.id, table.c.status_changed_at)
    )
    with migrated.write() as session:
        connection = session.connection()
        expected = [tuple(row) for row in connection.execute(query, {"first": ids[0]})]
        assert bulk.fetch_rows(connection, query, {"first": ids[0]}) == expected
        assert len(expected) == 2
        assert expected[0][2].tzinfo is UTC and expected[0][3] is None  # not_after, issued_at
        changed = bulk.fetch_rows(connection, returning, {"row_id": ids[0], "at": now})
    assert changed == [(ids[0], now)] and changed[0][1].tzinfo is UTC
    if bulk.driver_level(connection):
        with pytest.raises(ValueError, match="IN list"):
            bulk.fetch_rows(connection, select(table.c.id).where(table.c.id.in_(ids)))
