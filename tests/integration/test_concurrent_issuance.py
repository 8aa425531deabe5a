"""Several processes issue at once through one SoftHSM token and one database (both engines):
serials stay unique, every certificate is recorded, and the audit chain verifies."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from ca import audit
from ca.bootstrap import bootstrap
from ca.config import load_config
from ca.core import CACore
from ca.storage.models import AuditEntryRow, CertificateRow

pytestmark = pytest.mark.integration

PROCESSES = 3
THREADS = 2
PER_THREAD = 15


def _config_text(tmp_path: Path, database_url: str) -> str:
    return f"""
data_dir = "{tmp_path / "data"}"
[database]
url = "{database_url}"
"""


def _csr(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.DER)
    )


def _issue_many(config_path: str, worker: int, results: multiprocessing.Queue) -> None:
    import threading

    from ca.csr import parse_csr
    from ca.issuance_request import IssuanceRequest

    core = CACore.from_config(load_config(config_path))
    serials: list[str] = []
    errors: list[str] = []

    def run(thread: int) -> None:
        for i in range(PER_THREAD):
            try:
                csr = parse_csr(_csr(f"w{worker}-t{thread}-{i}.example.test"))
                issued = core.issue(
                    IssuanceRequest(
                        channel="admin",
                        requester=f"worker-{worker}",
                        profile="tls-server",
                        public_key=csr.public_key,
                        identifiers=csr.identifiers,
                        subject=csr.subject,
                    )
                )
                serials.append(issued.serial_hex)
            except Exception as exc:  # reported to the parent, which fails the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    results.put((serials, errors))
    core.close()


def test_processes_and_threads_issue_concurrently_with_unique_serials(tmp_path, database_url):
    config_path = tmp_path / "privca.toml"
    config_path.write_text(_config_text(tmp_path, database_url))
    core, _ = bootstrap(load_config(config_path))
    core.close()

    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    workers = [
        context.Process(target=_issue_many, args=(str(config_path), w, results))
        for w in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    collected = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(60)
    serials = [s for batch, _ in collected for s in batch]
    errors = [e for _, batch in collected for e in batch]
    assert errors == []
    expected = PROCESSES * THREADS * PER_THREAD
    assert len(serials) == len(set(serials)) == expected

    core = CACore.from_config(load_config(config_path))
    try:
        with core.database.read() as session:
            issued = session.scalar(
                select(func.count())
                .select_from(CertificateRow)
                .where(CertificateRow.status == "issued", CertificateRow.profile == "tls-server")
            )
            entries = session.scalar(
                select(func.count())
                .select_from(AuditEntryRow)
                .where(AuditEntryRow.action == "certificate_issued")
            )
            pending = session.scalar(
                select(func.count())
                .select_from(CertificateRow)
                .where(CertificateRow.status == "pending")
            )
        assert (issued, pending) == (expected, 0)
        assert entries >= expected
        signer = core.keystore.find_signer(core.config.audit.key_label)
        assert audit.write_checkpoint(core.database, signer) is not None
        result = audit.verify(core.database, {signer.key_uri: signer.public_key})
        assert result.ok, result.problem
    finally:
        core.close()
