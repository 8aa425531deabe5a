"""The issuance pipeline and its invariants, on SQLite and PostgreSQL, with software CA keys."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from ca import audit
from ca.bootstrap import bootstrap
from ca.csr import parse_csr
from ca.errors import AlreadyRevoked, BadCSR, BadPublicKey, NotFound, PolicyDenied, UnknownProfile
from ca.issuance_request import IssuanceRequest
from ca.revocation import revoke
from ca.storage.models import AuditEntryRow, CertificateRow
from tests.support.core_factory import make_core
from tests.support.pki_lint import assert_lints_clean_certificate
from tests.support.software_keystore import SoftwareKeyStore


def make_csr(
    names: list[str], key: object | None = None, cn: str | None = None
) -> tuple[bytes, object]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or names[0])])
        if (cn or names)
        else x509.Name([])
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM), key


def request_for(pem: bytes, profile: str = "tls-server", **kwargs: object) -> IssuanceRequest:
    parsed = parse_csr(pem)
    return IssuanceRequest(
        channel="cli",
        requester="test",
        profile=profile,
        public_key=parsed.public_key,
        identifiers=parsed.identifiers,
        subject=parsed.subject,
        **kwargs,
    )


@pytest.fixture
def keystore() -> SoftwareKeyStore:
    return SoftwareKeyStore()


@pytest.fixture
def core(tmp_path, database_url, keystore):
    core = make_core(tmp_path, database_url, keystore)
    yield core
    core.close()


def count(core, model, *where) -> int:
    with core.database.read() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def test_issued_certificate_chains_to_the_root_and_lints_clean(core):
    pem, _ = make_csr(["www.example.test", "api.example.test"])
    issued = core.issue(request_for(pem))
    root = core.issuers["root"].certificate
    store = verification.Store([root])
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName("api.example.test"))
    )
    verifier.verify(issued.certificate, list(issued.issuer.chain[:-1]))
    assert_lints_clean_certificate(issued.der)
    for issuer in core.issuers.values():
        assert_lints_clean_certificate(issuer.certificate_der)
    sans = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["www.example.test", "api.example.test"]
    eku = issued.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aia = issued.certificate.extensions.get_extension_for_class(
        x509.AuthorityInformationAccess
    ).value
    assert {d.access_location.value for d in aia} == {
        "http://pki.test/ocsp",
        "http://pki.test/ca/issuing-ec.crt",
    }
    cdp = issued.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == "http://pki.test/crl/issuing-ec.crl"


def test_issuance_row_and_audit_entry_are_committed_with_the_certificate(core):
    pem, _ = make_csr(["a.example.test"])
    issued = core.issue(request_for(pem, owner="team-a"))
    with core.database.read() as session:
        row = session.get(CertificateRow, issued.row_id)
        assert row.status == "issued"
        assert row.der == issued.der
        assert row.owner == "team-a"
        assert row.tbs_sha256 == hashlib.sha256(issued.certificate.tbs_certificate_bytes).digest()
        entry = session.scalars(
            select(AuditEntryRow).where(AuditEntryRow.action == "certificate_issued")
        ).one()
        assert issued.serial_hex in entry.object
    assert audit.verify(core.database, lambda uri: None).ok


def test_serial_is_recorded_as_pending_before_the_token_signs(core, keystore):
    pem, _ = make_csr(["b.example.test"])
    seen = {}
    original = core.sign

    def spy(issuer, data):
        with core.database.read() as session:
            rows = list(
                session.scalars(
                    select(CertificateRow).where(
                        CertificateRow.tbs_sha256 == hashlib.sha256(data).digest()
                    )
                )
            )
        seen["rows"] = [(r.status, r.der) for r in rows]
        return original(issuer, data)

    core.sign = spy
    core.issue(request_for(pem))
    assert seen["rows"] == [("pending", None)]


def _issue_then_crash(core, pem):
    import ca.issuance

    def crash(*args, **kwargs):
        os._exit(17)  # the process dies after signing, before the issuing commit

    ca.issuance.record_issuance = crash
    core.database.dispose()
    core.issue(request_for(pem))
    os._exit(0)


def test_crash_between_signing_and_commit_leaves_only_a_pending_row(core):
    pem, _ = make_csr(["crash.example.test"])
    core.database.dispose()
    child = multiprocessing.get_context("fork").Process(target=_issue_then_crash, args=(core, pem))
    child.start()
    child.join(60)
    assert child.exitcode == 17
    with core.database.read() as session:
        rows = list(
            session.scalars(
                select(CertificateRow).where(CertificateRow.subject == "CN=crash.example.test")
            )
        )
        assert [(r.status, r.der) for r in rows] == [("pending", None)]
        issued_entries = session.scalar(
            select(func.count())
            .select_from(AuditEntryRow)
            .where(
                AuditEntryRow.action == "certificate_issued",
                AuditEntryRow.object.contains(rows[0].serial),
            )
        )
        assert issued_entries == 0


def test_policy_denial_issues_nothing_and_is_audited(tmp_path, database_url, keystore):
    core = make_core(
        tmp_path,
        database_url,
        keystore,
        extra="""
[profiles.tls-server]
issuer = "issuing-ec"
extended_key_usage = ["serverAuth"]
[profiles.tls-server.policy]
allowed_dns = [".corp.test"]
""",
    )
    pem, _ = make_csr(["ok.corp.test", "evil.example.com"])
    before = count(core, CertificateRow)
    with pytest.raises(PolicyDenied) as denied:
        core.issue(request_for(pem))
    assert [v.identifier for v in denied.value.per_identifier] == ["dns:evil.example.com"]
    assert count(core, CertificateRow) == before
    assert count(core, AuditEntryRow, AuditEntryRow.action == "issuance_denied") == 1
    core.close()


def test_unknown_profile_is_refused_without_a_write(core):
    pem, _ = make_csr(["c.example.test"])
    before = count(core, CertificateRow), count(core, AuditEntryRow)
    with pytest.raises(UnknownProfile):
        core.issue(request_for(pem, profile="nope"))
    assert (count(core, CertificateRow), count(core, AuditEntryRow)) == before


def test_serials_are_positive_random_and_at_most_20_octets(core):
    serials = []
    for i in range(20):
        pem, _ = make_csr([f"s{i}.example.test"])
        serials.append(core.issue(request_for(pem)).serial)
    assert len(set(serials)) == 20
    assert all(0 < s < 2**159 for s in serials)
    assert max(s.bit_length() for s in serials) > 64


COPIED_COLUMNS = (
    "issuer_id, serial, status, tbs_sha256, subject, sans, profile, channel, requester,"
    " public_key_sha256, not_before, not_after, created_at, status_changed_at"
)


def test_database_refuses_a_duplicate_serial_for_one_issuer(core):
    pem, _ = make_csr(["d.example.test"])
    issued = core.issue(request_for(pem))
    with pytest.raises(IntegrityError), core.database.write() as session:
        session.execute(
            text(
                f"INSERT INTO certificates ({COPIED_COLUMNS}) SELECT {COPIED_COLUMNS}"
                f" FROM certificates WHERE id = {issued.row_id}"
            )
        )


def test_revocation_is_recorded_once_and_audited(core):
    pem, _ = make_csr(["e.example.test"])
    issued = core.issue(request_for(pem))
    when = datetime.now(UTC) - timedelta(hours=1)
    result = revoke(
        core, issued.serial_hex, reason=1, invalidity_date=when, actor="t", channel="cli"
    )
    assert result.reason_name == "keyCompromise"
    with pytest.raises(AlreadyRevoked):
        revoke(core, issued.serial_hex, reason=1, actor="t", channel="cli")
    with pytest.raises(NotFound):
        revoke(core, "abcdef", actor="t", channel="cli")
    with core.database.read() as session:
        row = session.get(CertificateRow, issued.row_id)
        assert (row.status, row.revocation_reason) == ("revoked", 1)
        assert abs(row.invalidity_date - when) < timedelta(seconds=1)
    assert count(core, AuditEntryRow, AuditEntryRow.action == "certificate_revoked") == 1


def test_malformed_and_badly_signed_csrs_are_refused():
    with pytest.raises(BadCSR):
        parse_csr(b"not a csr")
    pem, _ = make_csr(["f.example.test"])
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    tampered = der[:-5] + bytes([der[-5] ^ 0xFF]) + der[-4:]
    with pytest.raises(BadCSR):
        parse_csr(tampered)
    with pytest.raises(BadCSR):
        parse_csr(b"A" * 70000)


def test_weak_rsa_key_is_denied_by_policy(core):
    weak = rsa.generate_private_key(65537, 1024)
    pem, _ = make_csr(["g.example.test"], key=weak)
    with pytest.raises((PolicyDenied, BadPublicKey)):
        core.issue(request_for(pem))


def test_certificate_never_outlives_its_issuer(core):
    pem, _ = make_csr(["h.example.test"])
    issued = core.issue(request_for(pem, profile="device", validity_seconds=800 * 86400))
    assert issued.certificate.not_valid_after_utc <= issued.issuer.certificate.not_valid_after_utc


def test_init_is_idempotent_and_keeps_keys_and_certificates(tmp_path, database_url, keystore):
    core = make_core(tmp_path, database_url, keystore)
    ders = {name: issuer.certificate_der for name, issuer in core.issuers.items()}
    keys = dict(keystore.keys)
    core2, report = bootstrap(core.config, core)
    assert report.ca.created_keys == () and report.ca.created_certificates == ()
    assert not report.audit_key_created
    assert {n: i.certificate_der for n, i in core2.issuers.items()} == ders
    assert keystore.keys == keys
    core.close()


def test_offline_root_csr_and_import(tmp_path, database_url, keystore):
    from ca.issuers import import_certificate, pending_csrs

    core = make_core(
        tmp_path,
        database_url,
        keystore,
        extra="""
[[issuers]]
name = "issuing-ext"
subject = "CN=External Issuing CA"
key_type = "ec-p256"
parent = "external"
""",
    )
    assert "issuing-ext" not in core.issuers
    csr = x509.load_der_x509_csr(pending_csrs(core.database)["issuing-ext"])
    assert csr.is_signature_valid
    offline_key = ec.generate_private_key(ec.SECP384R1())
    offline_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Offline Root")])
    now = datetime.now(UTC)
    offline_root = (
        x509.CertificateBuilder()
        .subject_name(offline_name)
        .issuer_name(offline_name)
        .public_key(offline_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(offline_key, hashes.SHA384())
    )
    signed = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(offline_name)
        .public_key(csr.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(offline_key, hashes.SHA384())
    )

    def audit_hook(session, action, obj, details):
        core.audit(session, actor="t", channel="cli", action=action, object=obj, details=details)

    wrong = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(offline_name)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(3)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(offline_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    from ca.errors import BadRequest

    with pytest.raises(BadRequest):
        import_certificate(
            core.database,
            keystore,
            "issuing-ext",
            wrong.public_bytes(pem),
            offline_root.public_bytes(pem),
            audit=audit_hook,
        )
    import_certificate(
        core.database,
        keystore,
        "issuing-ext",
        signed.public_bytes(pem),
        offline_root.public_bytes(pem),
        audit=audit_hook,
    )
    core.reload_issuers()
    issuer = core.issuers["issuing-ext"]
    assert [c.subject for c in issuer.chain] == [csr.subject, offline_name]
    core.close()


LINTED_PROFILE = """
[profiles.strict]
issuer = "issuing-ec"
subject_from_csr = true
require_san = false
san_types = ["dns", "uri"]
extended_key_usage = ["clientAuth"]
lint = "{mode}"
"""


def _overlong_initials_request() -> IssuanceRequest:
    # X.520 caps initials at ub-name (32768 characters): pkilint reports a longer value, and the
    # policy engine has no rule for this rarely used attribute, so only the lint can catch it.
    key = ec.generate_private_key(ec.SECP256R1())
    initials = x509.ObjectIdentifier("2.5.4.43")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(initials, "I" * 33000)]))
        .sign(key, hashes.SHA256())
    )
    return request_for(csr.public_bytes(serialization.Encoding.PEM), profile="strict")


def test_pre_issuance_lint_enforce_refuses_before_any_row_is_written(
    tmp_path, database_url, keystore
):
    from ca.errors import LintFailed

    core = make_core(tmp_path, database_url, keystore, extra=LINTED_PROFILE.format(mode="enforce"))
    before = count(core, CertificateRow)
    with pytest.raises(LintFailed) as refused:
        core.issue(_overlong_initials_request())
    assert "pkilint" in refused.value.safe_detail or "lint" in refused.value.safe_detail
    assert count(core, CertificateRow) == before
    core.close()


def test_pre_issuance_lint_warn_issues_and_logs(tmp_path, database_url, keystore, caplog):
    core = make_core(tmp_path, database_url, keystore, extra=LINTED_PROFILE.format(mode="warn"))
    issued = core.issue(_overlong_initials_request())
    assert len(issued.certificate.subject.rfc4514_string()) > 33000
    assert "pre-issuance lint findings" in caplog.text
    core.close()


def test_an_issuer_whose_token_key_differs_from_its_certificate_is_refused(core, keystore):
    from hsm.errors import KeyMismatch
    from tests.support.software_signer import SoftwareSigner

    keystore.keys["privca-ca-issuing-ec"] = SoftwareSigner("ec-p256", "privca-ca-issuing-ec")
    core.reload_issuers()
    with pytest.raises(KeyMismatch):
        core.issuers  # noqa: B018 - loading is what is tested


def test_a_signature_the_token_got_wrong_issues_nothing_and_is_audited(core, keystore):
    from ca.errors import SignatureInvalid

    signer = keystore.keys["privca-ca-issuing-ec"]
    real_sign = signer.sign
    signer.sign = lambda data: real_sign(data + b"corrupted")  # a faulty token
    pem, _ = make_csr(["faulty.example.test"])
    with pytest.raises(SignatureInvalid):
        core.issue(request_for(pem))
    with core.database.read() as session:
        row = session.scalars(
            select(CertificateRow).where(CertificateRow.subject == "CN=faulty.example.test")
        ).one()
        assert (row.status, row.der) == ("failed", None)
    assert count(core, AuditEntryRow, AuditEntryRow.action == "signature_invalid") == 1


def test_revocation_urls_can_have_their_own_plain_http_base(tmp_path, database_url, keystore):
    core = make_core(
        tmp_path,
        database_url,
        keystore,
        server_extra='revocation_base_url = "http://crl.pki.test/"',
    )
    pem, _ = make_csr(["r.example.test"])
    certificate = core.issue(request_for(pem)).certificate
    aia = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {d.access_location.value for d in aia} == {
        "http://crl.pki.test/ocsp",
        "http://crl.pki.test/ca/issuing-ec.crt",
    }
    cdp = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == "http://crl.pki.test/crl/issuing-ec.crl"
    issuing = core.issuers["issuing-ec"].certificate
    cdp = issuing.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == "http://crl.pki.test/crl/root.crl"
    core.close()


def _issue_on_threads(core, requests):
    """Issue `requests` from one thread each, started together; returns result or exception."""
    import threading

    results: list[object] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def run(index):
        start.wait(30)
        try:
            results[index] = core.issue(requests[index])
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_concurrent_issuances_share_transactions_and_each_is_recorded_with_its_listeners(core):
    from ca.storage.models import JobRow

    seen: list[tuple[str, int]] = []

    def listener(session, issuer, row_id):
        # Runs inside the recording transaction: the row is already issued there.
        status = session.scalar(select(CertificateRow.status).where(CertificateRow.id == row_id))
        seen.append((status, row_id))

    def on_recorded(session, row_id):
        session.execute(
            text(
                "INSERT INTO jobs (kind, payload, status, run_at, attempts, max_attempts, "
                "created_at) VALUES ('recorded', :payload, 'done', :now, 0, 1, :now)"
            ),
            {"payload": str(row_id), "now": datetime.now(UTC)},
        )

    core.issuance_listeners.append(listener)
    issued_before = count(core, CertificateRow, CertificateRow.status == "issued")
    rounds, threads = 3, 8
    for round_ in range(rounds):
        requests = [
            request_for(make_csr([f"t{round_}-{i}.example.test"])[0], on_recorded=on_recorded)
            for i in range(threads)
        ]
        results = _issue_on_threads(core, requests)
        assert all(not isinstance(r, Exception) for r in results), results
    issued = count(core, CertificateRow, CertificateRow.status == "issued")
    assert issued == issued_before + rounds * threads
    assert sorted(row_id for _, row_id in seen) == sorted({row_id for _, row_id in seen})
    assert {status for status, _ in seen} == {"issued"} and len(seen) == rounds * threads
    with core.database.read() as session:
        payloads = set(session.scalars(select(JobRow.payload).where(JobRow.kind == "recorded")))
    assert payloads == {str(row_id) for _, row_id in seen}
    assert count(core, AuditEntryRow, AuditEntryRow.action == "certificate_issued") == 24
    assert core.group_commit.batches < 2 * rounds * threads  # some units shared a transaction
    assert audit.verify(core.database, lambda uri: None).ok


def test_a_failing_on_recorded_fails_only_its_own_issuance(core):
    def refuse(session, row_id):
        raise RuntimeError("the front end refuses this one")

    issued_before = count(core, CertificateRow, CertificateRow.status == "issued")
    requests = [
        request_for(make_csr([f"f{i}.example.test"])[0], on_recorded=refuse if i == 3 else None)
        for i in range(8)
    ]
    results = _issue_on_threads(core, requests)
    assert isinstance(results[3], RuntimeError)
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 3)
    with core.database.read() as session:
        refused = session.scalars(
            select(CertificateRow).where(CertificateRow.subject == "CN=f3.example.test")
        ).one()
        assert (refused.status, refused.der) == ("pending", None)
    assert count(core, CertificateRow, CertificateRow.status == "issued") == issued_before + 7
    assert count(core, AuditEntryRow, AuditEntryRow.action == "certificate_issued") == 7
    assert audit.verify(core.database, lambda uri: None).ok
