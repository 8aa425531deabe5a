# ruff: noqa: S303 - RFC 5019 clients name certificates by SHA-1 CertIDs
"""The responder through its WSGI endpoint with software CA keys, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import time
import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from ca import jobs
from ca.errors import ConfigError
from ca.issuance_request import Identifier, IssuanceRequest
from ca.revocation import revoke
from ca.storage.models import JobRow
from ca.web.app import create_app
from ocsp import cli as ocsp_cli
from ocsp import messages, presign
from ocsp.responder import POLL_INTERVAL
from ocsp.storage import OCSPResponderRow, OCSPResponseRow
from tests.support.clock import Clock
from tests.support.core_factory import make_core
from tests.support.pki_lint import assert_lints_clean_certificate, assert_lints_clean_ocsp_response
from tests.support.software_keystore import SoftwareKeyStore
from tests.unit.ocsp.test_messages import self_signed


class Counting:
    """Counts signatures made with every key of a SoftwareKeyStore."""

    def __init__(self, keystore: SoftwareKeyStore) -> None:
        self.count = 0
        self.keystore = keystore

    def wrap(self) -> None:
        for signer in self.keystore.keys.values():
            if getattr(signer, "_counted", False):
                continue
            original = signer.sign

            def sign(data: bytes, original=original) -> bytes:
                self.count += 1
                return original(data)

            signer.sign = sign  # type: ignore[method-assign]
            signer._counted = True  # type: ignore[attr-defined]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def setup(tmp_path, database_url, clock, extra: str = ""):
    keystore = SoftwareKeyStore()
    core = make_core(tmp_path, database_url, keystore, extra=extra, clock=clock)
    app = create_app(core=core)
    return core, app.test_client(), app.extensions["privca.ocsp"], keystore


@pytest.fixture
def env(tmp_path, database_url, clock):
    core, client, responder, keystore = setup(tmp_path, database_url, clock)
    yield core, client, responder, keystore
    core.close()


def issue(core, name: str = "a.example.test"):
    key = ec.generate_private_key(ec.SECP256R1())
    return core.issue(
        IssuanceRequest(
            channel="cli",
            requester="test",
            profile="tls-server",
            public_key=key.public_key(),
            identifiers=(Identifier("dns", name),),
        )
    )


def request_for(
    issued, algorithm: hashes.HashAlgorithm | None = None, nonce: bytes | None = None
) -> bytes:
    algorithm = algorithm or hashes.SHA1()
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        issued.certificate, issued.issuer.certificate, algorithm
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def get_path(der: bytes) -> str:
    return "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def verified(response_der: bytes, issued) -> ocsp.OCSPResponse:
    """Parse, check the signature chain (responder certificate or issuer), lint."""
    assert_lints_clean_ocsp_response(response_der)
    parsed = ocsp.load_der_ocsp_response(response_der)
    assert parsed.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    issuer = issued.issuer.certificate
    if parsed.certificates:
        (responder_certificate,) = parsed.certificates
        responder_certificate.verify_directly_issued_by(issuer)
        public_key = responder_certificate.public_key()
    else:
        public_key = issuer.public_key()
    public_key.verify(
        parsed.signature, parsed.tbs_response_bytes, ec.ECDSA(parsed.signature_hash_algorithm)
    )
    return parsed


def run_jobs(core) -> int:
    return jobs.JobRunner(core, core.job_handlers).run_until_idle()


def test_good_revoked_and_unknown_over_post_and_get(env, clock):
    core, client, _responder, _ = env
    issued = issue(core)
    response = client.post(
        "/ocsp", data=request_for(issued), content_type="application/ocsp-request"
    )
    assert response.status_code == 200 and response.mimetype == "application/ocsp-response"
    parsed = verified(response.data, issued)
    assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert parsed.serial_number == issued.serial
    assert parsed.next_update_utc - parsed.this_update_utc == timedelta(days=4)

    revoke(core, issued.serial_hex, reason=1, actor="t", channel="cli")
    time.sleep(POLL_INTERVAL * 2)  # one change-watch interval (the guarantee is about two)
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384()):
        response = client.get(get_path(request_for(issued, algorithm)))
        parsed = verified(response.data, issued)
        assert parsed.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert parsed.revocation_reason == x509.ReasonFlags.key_compromise
        assert parsed.revocation_time_utc == clock.now.replace(microsecond=0)
        assert parsed.hash_algorithm.name == algorithm.name

    unissued = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        parsed.issuer_name_hash, parsed.issuer_key_hash, 12345, hashes.SHA384()
    )
    response = client.post("/ocsp", data=unissued.build().public_bytes(serialization.Encoding.DER))
    parsed = verified(response.data, issued)
    assert parsed.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


def test_delegated_responder_certificate_is_short_lived_nocheck_and_recorded(env, clock):
    core, client, responder, keystore = env
    issued = issue(core)
    parsed = verified(client.post("/ocsp", data=request_for(issued)).data, issued)
    (certificate,) = parsed.certificates
    assert_lints_clean_certificate(certificate.public_bytes(serialization.Encoding.DER))
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    certificate.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc <= timedelta(
        days=7, minutes=5
    )
    assert keystore.has_key("privca-ocsp-issuing-ec")
    assert (
        parsed.responder_key_hash
        == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest
    )
    with core.database.read() as session:
        from ca.storage.models import AuditEntryRow, CertificateRow

        row = session.scalars(
            select(CertificateRow).where(
                CertificateRow.serial == format(certificate.serial_number, "x")
            )
        ).one()
        assert row.status == "issued" and row.profile == "ocsp-responder"
        actions = session.scalars(select(AuditEntryRow.action)).all()
    assert "certificate_issued" in actions and "key_generated" in actions

    # Renewed before it runs out: responses never outlive the responder certificate.
    clock.advance(days=4)
    presign.refresh(responder)
    with core.database.read() as session:
        assert session.scalar(select(func.count()).select_from(OCSPResponderRow)) >= 3
    responder.forget_all()
    renewed = verified(client.post("/ocsp", data=request_for(issued)).data, issued)
    assert renewed.certificates[0].serial_number != certificate.serial_number
    assert renewed.next_update_utc <= renewed.certificates[0].not_valid_after_utc


def test_issuances_sharing_a_transaction_look_up_the_presign_job_once(env, clock):
    core, _, _, _ = env
    issuer = next(iter(core.issuers.values()))
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        if "jobs" in statement:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        with core.database.write() as session:
            for row_id in (1, 2, 3):  # what a group commit does for a batch of issuances
                core.after_issuance(session, issuer, row_id)
        first_transaction = len(statements)
        with core.database.write() as session:
            core.after_issuance(session, issuer, 4)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    # One lookup (and one insert) in the first transaction, one lookup in the next.
    assert first_transaction == 2 and len(statements) == 3
    with core.database.read() as session:
        queued = session.scalar(
            select(func.count())
            .select_from(JobRow)
            .where(JobRow.kind == presign.JOB_PRESIGN, JobRow.status == "queued")
        )
    assert queued == 1


def test_presigned_responses_are_served_without_signing(env, clock):
    core, client, responder, keystore = env
    issued = [issue(core, f"n{i}.example.test") for i in range(5)]
    clock.advance(seconds=2)  # pre-signing runs a second after issuance, for a whole batch
    run_jobs(core)  # the issuance listener's pre-signing job
    with core.database.read() as session:
        stored = session.scalar(
            select(func.count())
            .select_from(OCSPResponseRow)
            .where(OCSPResponseRow.serial.in_([i.serial_hex for i in issued]))
        )
    assert stored == 10  # SHA-1 and SHA-256 CertIDs
    counter = Counting(keystore)
    counter.wrap()
    responder.forget_all()
    for certificate in issued:
        for algorithm in (hashes.SHA1(), hashes.SHA256()):
            parsed = verified(
                client.get(get_path(request_for(certificate, algorithm))).data, certificate
            )
            assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert counter.count == 0

    # A revocation: the stale stored response is not served, and the job re-signs it.
    revoke(core, issued[0].serial_hex, reason=4, actor="t", channel="cli")
    time.sleep(POLL_INTERVAL * 2)
    parsed = verified(client.get(get_path(request_for(issued[0]))).data, issued[0])
    assert parsed.certificate_status == ocsp.OCSPCertStatus.REVOKED
    run_jobs(core)
    responder.forget_all()
    before = counter.count
    parsed = verified(client.get(get_path(request_for(issued[0], hashes.SHA256()))).data, issued[0])
    assert parsed.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert counter.count == before

    # Refresh: responses within refresh_before of nextUpdate are re-signed by the job.
    clock.advance(days=2, seconds=10)
    signed, more = presign.refresh(responder)
    assert signed >= 5 and not more


def test_nonce_is_echoed_in_a_fresh_response_and_several_cert_ids_answered(env):
    core, client, _, _ = env
    first, second = issue(core, "one.example.test"), issue(core, "two.example.test")
    response = client.post("/ocsp", data=request_for(first, nonce=b"\x01" * 16))
    parsed = verified(response.data, first)
    nonce = parsed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert nonce == b"\x01" * 16
    assert response.headers["Cache-Control"] == "no-store"
    # RFC 8954: nonces over 32 octets may be answered without one (the pre-signed answer).
    parsed = verified(client.post("/ocsp", data=request_for(first, nonce=b"\x02" * 40)).data, first)
    with pytest.raises(x509.ExtensionNotFound):
        parsed.extensions.get_extension_for_class(x509.OCSPNonce)

    ids = [
        messages.parse_request(request_for(c), max_cert_ids=1).cert_ids[0].der
        for c in (first, second)
    ]
    request = messages.tlv(
        0x30,
        messages.tlv(0x30, messages.tlv(0x30, b"".join(messages.tlv(0x30, i) for i in ids))),
    )
    response = client.post("/ocsp", data=request)
    assert_lints_clean_ocsp_response(response.data)
    parsed = ocsp.load_der_ocsp_response(response.data)
    assert {single.serial_number for single in parsed.responses} == {first.serial, second.serial}


def test_http_caching_headers_and_conditional_get(env):
    core, client, _, _ = env
    issued = issue(core)
    path = get_path(request_for(issued))
    response = client.get(path)
    verified(response.data, issued)
    headers = response.headers
    assert headers["Cache-Control"] == "max-age=3600, public, no-transform, must-revalidate"
    parsed = ocsp.load_der_ocsp_response(response.data)
    assert headers["Last-Modified"] == parsed.this_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert headers["Expires"] == parsed.next_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
    again = client.get(path, headers={"If-None-Match": headers["ETag"]})
    assert (
        again.status_code == 304 and again.data == b"" and again.headers["ETag"] == headers["ETag"]
    )
    # If-Modified-Since is ignored: a one-second date cannot tell a "good" answer from a
    # "revoked" one signed in the same second.
    again = client.get(path, headers={"If-Modified-Since": headers["Last-Modified"]})
    assert again.status_code == 200 and again.data == response.data
    assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
    # base64url and unpadded forms are tolerated.
    encoded = base64.urlsafe_b64encode(request_for(issued)).decode().rstrip("=")
    assert client.get("/ocsp/" + encoded).data == response.data
    assert client.head(path).status_code == 200


def test_bad_input_gets_ocsp_errors_never_a_500(env, tmp_path, database_url, clock):
    core, client, _, _ = env
    issued = issue(core)
    good = request_for(issued)
    malformed = [
        client.post("/ocsp", data=b""),
        client.post("/ocsp", data=b"garbage"),
        client.post("/ocsp", data=good[:-1]),
        client.post("/ocsp", data=good + b"\x00"),
        client.post("/ocsp", data=b"\x30\x82" + b"\xff" * 9000),
        client.get("/ocsp/"),
        client.get("/ocsp/%%%"),
        client.get("/ocsp/" + "QUJD" * 5000),
        client.get("/ocsp/" + base64.b64encode(b"\x30\x00").decode()),
    ]
    for response in malformed:
        assert response.status_code == 400
        parsed = ocsp.load_der_ocsp_response(response.data)
        assert parsed.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert client.put("/ocsp", data=good).status_code == 405

    other_ca, _ = self_signed("other")
    sent = messages.parse_request(good, max_cert_ids=1).cert_ids[0]
    md5_request = messages.encode_request(  # an unsupported CertID hash (MD5)
        messages.encode_cert_id(
            bytes.fromhex("2a864886f70d0205"), sent.name_hash, sent.key_hash, sent.serial
        )
    )
    foreign = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(other_ca, other_ca, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    for request in (
        foreign,
        md5_request,
    ):
        response = client.post("/ocsp", data=request)
        assert response.status_code == 403
        parsed = ocsp.load_der_ocsp_response(response.data)
        assert parsed.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED

    # A request list over the limit is refused before any lookup.
    cert_id = messages.parse_request(good, max_cert_ids=1).cert_ids[0].der
    huge = messages.tlv(
        0x30, messages.tlv(0x30, messages.tlv(0x30, messages.tlv(0x30, cert_id) * 17))
    )
    assert client.post("/ocsp", data=huge).status_code == 400


def test_issuer_signed_responses_and_revoked_for_never_issued(tmp_path, database_url, clock):
    extra = '[ocsp]\nresponder = "issuer"\nunknown_for_unissued = false\n'
    core, client, _, keystore = setup(tmp_path, database_url, clock, extra)
    issued = issue(core)
    parsed = verified(client.post("/ocsp", data=request_for(issued)).data, issued)
    assert parsed.certificates == []
    assert not keystore.has_key("privca-ocsp-issuing-ec")
    unissued = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        parsed.issuer_name_hash, parsed.issuer_key_hash, 777, hashes.SHA1()
    )
    response = client.post("/ocsp", data=unissued.build().public_bytes(serialization.Encoding.DER))
    parsed = verified(response.data, issued)
    # RFC 6960 §2.2: revoked, certificateHold, 1970, with the extended revoke extension.
    assert parsed.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert parsed.revocation_reason == x509.ReasonFlags.certificate_hold
    assert parsed.revocation_time_utc == datetime(1970, 1, 1, tzinfo=UTC)
    oids = [e.oid.dotted_string for e in parsed.extensions]
    assert "1.3.6.1.5.5.7.48.1.9" in oids
    core.close()


def test_export_writes_files_named_for_get_paths(env, tmp_path):
    core, _client, _, _ = env
    issued = [issue(core, f"e{i}.example.test") for i in range(3)]
    directory = tmp_path / "export"
    count = ocsp_cli.export(core, directory)
    assert count >= 6
    for certificate in issued:
        for algorithm in (hashes.SHA1(), hashes.SHA256()):
            name = base64.b64encode(request_for(certificate, algorithm)).decode()
            der = directory.joinpath(*[p for p in name.split("/") if p]).read_bytes()
            parsed = verified(der, certificate)
            assert parsed.serial_number == certificate.serial


def test_settings_are_validated_with_the_key_named(tmp_path, sqlite_database_url, clock):
    for table, message in [
        ("[frontends.ocsp]\nmax_cert_ids = 0\n", "frontends.ocsp.max_cert_ids"),
        ('[frontends.ocsp]\nresponder_key_type = "dsa"\n', "frontends.ocsp.responder_key_type"),
        ('[frontends.ocsp]\npresign_hashes = ["md5"]\n', "frontends.ocsp.presign_hashes"),
        ("[frontends.ocsp]\nbogus = 1\n", "frontends.ocsp.bogus: unknown key"),
        ('[frontends.ocsp]\nlisten = "8080"\n', "frontends.ocsp.listen"),
        ("[frontends.ocsp]\nlisten = 8080\n", "frontends.ocsp.listen"),
        ("[frontends.ocsp]\nlisten_processes = 0\n", "frontends.ocsp.listen_processes"),
    ]:
        with pytest.raises(ConfigError, match=message):
            setup(tmp_path, sqlite_database_url, clock, table)


def test_a_database_outage_gets_try_later_and_a_stale_watch_stops_answers_from_memory(
    env, monkeypatch
):
    from sqlalchemy.exc import OperationalError

    core, client, responder, _ = env
    path = get_path(request_for(issue(core)))
    assert client.get(path).status_code == 200  # now in the responder's cache
    assert responder.watch_fresh()

    def database_down(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(responder, "_poll", database_down)
    monkeypatch.setattr(responder, "_lookup", database_down)
    time.sleep(POLL_INTERVAL * 2)
    # The watch fails but has not been failing for long: the cached answer is still served.
    assert client.get(path).status_code == 200
    # Once it has failed for longer than [frontends.ocsp] watch_stale, memory is not trusted:
    # the status is read from the database again, which fails: tryLater, never a 500.
    responder.last_poll_ok -= responder.settings.watch_stale
    response = client.get(path)
    assert response.status_code == 503 and response.headers["Cache-Control"] == "no-store"
    assert ocsp.load_der_ocsp_response(response.data).response_status == (
        ocsp.OCSPResponseStatus.TRY_LATER
    )
    monkeypatch.undo()
    time.sleep(POLL_INTERVAL * 2)
    assert client.get(path).status_code == 200 and responder.watch_fresh()


def test_a_stale_watch_reads_the_current_status_instead_of_the_cached_answer(env, clock):
    core, client, responder, _ = env
    issued = issue(core)
    path = get_path(request_for(issued))
    assert verified(client.get(path).data, issued).certificate_status == ocsp.OCSPCertStatus.GOOD
    responder.polls_in_requests = False  # a watch that does not run, as when it is failing
    revoke(core, issued.serial_hex, reason=1, actor="t", channel="cli")
    responder.last_poll_ok -= responder.settings.watch_stale
    status = verified(client.get(path).data, issued).certificate_status
    assert status == ocsp.OCSPCertStatus.REVOKED
