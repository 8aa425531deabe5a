"""CRLs: the streaming encoder against cryptography's builder, numbering, deltas, shards, jobs,
and the HTTP endpoints, on SQLite and PostgreSQL with software CA keys."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import crl as asn1_crl
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ca import crl, jobs
from ca.core import CACore
from ca.errors import ConfigError
from ca.issuance_request import Identifier, IssuanceRequest
from ca.revocation import X509_REASON_FLAGS, revoke
from ca.storage import Database
from ca.storage.models import CRLRow
from ca.web.app import create_app
from tests.support.clock import Clock
from tests.support.core_factory import make_core
from tests.support.pki_lint import assert_lints_clean_certificate, assert_lints_clean_crl
from tests.support.software_keystore import SoftwareKeyStore


@pytest.fixture
def clock() -> Clock:
    return Clock()


def build_core(tmp_path, database_url, clock, extra: str = ""):
    return make_core(tmp_path, database_url, SoftwareKeyStore(), extra=extra, clock=clock)


@pytest.fixture
def core(tmp_path, database_url, clock):
    core = build_core(tmp_path, database_url, clock)
    yield core
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


def run_jobs(core) -> int:
    return jobs.JobRunner(core, core.job_handlers).run_until_idle()


def load(der: bytes, issuer) -> x509.CertificateRevocationList:
    parsed = x509.load_der_x509_crl(der)
    assert parsed.is_signature_valid(issuer.certificate.public_key())
    assert_lints_clean_crl(der)
    return parsed


def extension(parsed, oid):
    return parsed.extensions.get_extension_for_oid(oid)


# -- the encoder ---------------------------------------------------------------------------------


def random_entries(
    count: int, seed: int
) -> list[tuple[str, datetime, int | None, datetime | None]]:
    rng = random.Random(seed)
    base = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    entries = []
    for i in range(count):
        serial = rng.getrandbits(rng.choice([1, 7, 8, 63, 64, 127, 128, 159])) or 1
        revoked_at = base - timedelta(seconds=rng.randint(0, 10**9))
        if i % 11 == 0:
            revoked_at = datetime(2050 + i % 30, 1, 2, 3, 4, 5, tzinfo=UTC)  # GeneralizedTime
        reason = rng.choice([None, 0, *X509_REASON_FLAGS])
        invalidity = revoked_at - timedelta(hours=rng.randint(1, 1000)) if i % 3 == 0 else None
        entries.append((format(serial, "x"), revoked_at, reason, invalidity))
    return entries


def builder_revoked(entries) -> list[x509.RevokedCertificate]:
    revoked = []
    for serial, revoked_at, reason, invalidity in entries:
        builder = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(revoked_at)
        )
        if reason:
            builder = builder.add_extension(x509.CRLReason(X509_REASON_FLAGS[reason]), False)
        if invalidity is not None:
            builder = builder.add_extension(x509.InvalidityDate(invalidity), False)
        revoked.append(builder.build())
    return revoked


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"base_number": 41},
        {
            "idp_url": "http://pki.test/crl/issuing-ec/shard/2.crl",
            "freshest_url": "http://pki.test/crl/issuing-ec/shard/2/delta.crl",
        },
    ],
)
def test_streaming_encoder_matches_cryptography_builder_byte_for_byte(
    tmp_path, sqlite_database_url, clock, key_type, options
):
    core = build_core(tmp_path, sqlite_database_url, clock)
    issuer = core.issuers["issuing-rsa" if key_type.startswith("rsa") else "issuing-ec"]
    entries = random_entries(3000, seed=len(options) + len(key_type))
    this_update = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    next_update = this_update + timedelta(days=7)
    extensions = crl.crl_extensions(issuer, 42, **options)

    template = crl.crl_template(issuer, this_update, next_update, extensions)
    tbs = template.tbs(crl.encode_revoked_certificates(entries))
    reference = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.certificate.subject,
        last_update=this_update,
        next_update=next_update,
        extensions=extensions,
        revoked_certificates=builder_revoked(entries),
    ).sign(issuer.signer.private_key, issuer.signer.hash_algorithm)

    assert tbs == reference.tbs_certlist_bytes
    der = template.assemble(tbs, issuer.signer.sign(tbs))
    parsed = load(der, issuer)
    assert len(parsed) == len(entries)
    # The signatureAlgorithm field is the builder's too.
    assert (
        asn1_crl.CertificateList.load(der)["signature_algorithm"].dump()
        == asn1_crl.CertificateList.load(reference.public_bytes(Encoding.DER))[
            "signature_algorithm"
        ].dump()
    )


def test_empty_crl_matches_builder_and_has_no_revoked_list(tmp_path, sqlite_database_url, clock):
    core = build_core(tmp_path, sqlite_database_url, clock)
    issuer = core.issuers["issuing-ec"]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    extensions = crl.crl_extensions(issuer, 1)
    template = crl.crl_template(issuer, now, now + timedelta(days=1), extensions)
    reference = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.certificate.subject,
        last_update=now,
        next_update=now + timedelta(days=1),
        extensions=extensions,
    ).sign(issuer.signer.private_key, hashes.SHA256())
    assert template.tbs(b"") == reference.tbs_certlist_bytes


# -- generation, numbering, content ---------------------------------------------------------------


def test_complete_crl_lists_revoked_certificates_with_reason_and_invalidity_date(core, clock):
    issuer = core.issuers["issuing-ec"]
    good = issue(core, "good.example.test")
    compromised = issue(core, "bad.example.test")
    unspecified = issue(core, "plain.example.test")
    invalid_since = clock.now.replace(microsecond=0) - timedelta(days=2)
    revoke(
        core,
        compromised.serial_hex,
        reason=1,
        invalidity_date=invalid_since,
        actor="t",
        channel="cli",
    )
    revoke(core, unspecified.serial_hex, reason=0, actor="t", channel="cli")

    (published,) = crl.generate(core, issuer)
    parsed = load(published.der, issuer)
    assert extension(parsed, ExtensionOID.CRL_NUMBER).value.crl_number == published.number == 1
    aki = extension(parsed, ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
    assert aki.key_identifier == issuer.subject_key_id
    assert parsed.next_update_utc - parsed.last_update_utc == timedelta(days=7)
    assert parsed.get_revoked_certificate_by_serial_number(good.serial) is None
    entry = parsed.get_revoked_certificate_by_serial_number(compromised.serial)
    reason = entry.extensions.get_extension_for_oid(CRLEntryExtensionOID.CRL_REASON).value
    assert reason.reason == x509.ReasonFlags.key_compromise
    invalidity = entry.extensions.get_extension_for_oid(CRLEntryExtensionOID.INVALIDITY_DATE)
    assert invalidity.value.invalidity_date_utc == invalid_since
    plain = parsed.get_revoked_certificate_by_serial_number(unspecified.serial)
    assert len(plain.extensions) == 0  # RFC 5280 §5.3.1: no reasonCode for unspecified


def test_crl_numbers_rise_strictly_and_old_crls_are_pruned(core):
    issuer = core.issuers["issuing-ec"]
    numbers = [crl.generate(core, issuer)[0].number for _ in range(5)]
    assert numbers == [1, 2, 3, 4, 5]
    with core.database.read() as session:
        kept = session.scalars(
            select(CRLRow.number).where(CRLRow.issuer_id == issuer.id).order_by(CRLRow.number)
        ).all()
    assert kept == [3, 4, 5]


def test_the_schema_refuses_a_repeated_crl_number(core, clock):
    issuer = core.issuers["issuing-ec"]
    crl.generate(core, issuer)
    with pytest.raises(IntegrityError), core.database.write() as session:
        session.add(
            CRLRow(
                issuer_id=issuer.id,
                shard=0,
                number=1,
                delta=True,
                this_update=clock.now,
                next_update=clock.now,
                created_at=clock.now,
                entries=0,
            )
        )


def test_concurrent_generation_never_reuses_a_number(tmp_path, database_url, clock):
    # Two cores with their own engines: separate connection pools, as two processes have.
    core = build_core(tmp_path, database_url, clock)
    other = CACore(core.config, Database(database_url), core.keystore, clock=clock)
    issuer = core.issuers["issuing-ec"]
    numbers: list[int] = []
    errors: list[BaseException] = []

    def work(instance) -> None:
        try:
            for _ in range(3):
                numbers.extend(p.number for p in crl.generate(instance, issuer))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in (core, other, core, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(numbers) == list(range(1, 13))
    served = crl.CRLCache(core).current("issuing-ec", 0, False)
    assert served is not None and served.number == 12
    other.close()
    core.close()


def test_expired_certificates_leave_the_crl_after_the_grace_period(core, clock):
    issuer = core.issuers["issuing-ec"]
    issued = issue(core)
    revoke(core, issued.serial_hex, reason=4, actor="t", channel="cli")
    clock.advance(days=95)  # tls-server certificates live 90 days; grace is 7 days
    parsed = load(crl.generate(core, issuer)[0].der, issuer)
    assert parsed.get_revoked_certificate_by_serial_number(issued.serial) is not None
    clock.advance(days=3)
    parsed = load(crl.generate(core, issuer)[0].der, issuer)
    assert parsed.get_revoked_certificate_by_serial_number(issued.serial) is None


def test_revocation_regenerates_the_crl_after_the_debounce(core, clock):
    issuer = core.issuers["issuing-ec"]
    first = crl.generate(core, issuer)[0]
    issued = [issue(core, f"n{i}.example.test") for i in range(3)]
    for certificate in issued:
        revoke(core, certificate.serial_hex, reason=1, actor="t", channel="cli")
    run_jobs(core)
    assert crl.CRLCache(core).current("issuing-ec", 0, False).number == first.number  # debounced
    clock.advance(seconds=3)
    run_jobs(core)
    current = crl.CRLCache(core).current("issuing-ec", 0, False)
    assert current.number == first.number + 1  # one CRL for the burst
    parsed = load(current.der, issuer)
    assert {c.serial for c in issued} <= {r.serial_number for r in parsed}


def test_refresh_job_regenerates_before_next_update(core, clock):
    issuer = core.issuers["issuing-ec"]
    assert crl.due(core, issuer) == "complete"
    assert crl.refresh(core) == len(core.issuers)
    assert crl.due(core, issuer) is None and crl.refresh(core) == 0
    clock.advance(days=5, seconds=1)  # validity 7 days, refresh 2 days before
    assert crl.due(core, issuer) == "complete"
    crl.refresh(core)
    assert crl.CRLCache(core).current("issuing-ec", 0, False).number == 2


# -- deltas and shards ---------------------------------------------------------------------------

DELTA_AND_SHARDS = """
[crl]
shards = 4
delta = true
delta_validity = "1h"
"""


def test_delta_crls_and_shards(tmp_path, database_url, clock):
    core = build_core(tmp_path, database_url, clock, DELTA_AND_SHARDS)
    issuer = core.issuers["issuing-ec"]
    before = [issue(core, f"b{i}.example.test") for i in range(12)]
    for certificate in before[:6]:
        revoke(core, certificate.serial_hex, reason=1, actor="t", channel="cli")
    # Deltas re-list changes from crl.DELTA_OVERLAP before their base; keep clear of that here.
    clock.advance(minutes=10)
    published = crl.generate(core, issuer)
    complete = {p.shard: p for p in published if not p.delta}
    deltas = {p.shard: p for p in published if p.delta}
    assert set(complete) == set(deltas) == {0, 1, 2, 3, 4}

    # Every shard CRL names itself in an IDP; the shards partition the whole CRL.
    whole = load(complete[0].der, issuer)
    with pytest.raises(x509.ExtensionNotFound):
        extension(whole, ExtensionOID.ISSUING_DISTRIBUTION_POINT)
    union = set()
    for shard in range(1, 5):
        parsed = load(complete[shard].der, issuer)
        idp = extension(parsed, ExtensionOID.ISSUING_DISTRIBUTION_POINT)
        assert idp.critical
        assert idp.value.full_name[0].value == crl.crl_url(core, "issuing-ec", shard)
        freshest = extension(parsed, ExtensionOID.FRESHEST_CRL).value
        assert freshest[0].full_name[0].value == crl.crl_url(core, "issuing-ec", shard, delta=True)
        serials = {r.serial_number for r in parsed}
        assert all(crl.shard_of(s, 4) == shard for s in serials)
        union |= serials
    assert union == {r.serial_number for r in whole} == {c.serial for c in before[:6]}

    # A certificate issued now names its shard (and its delta) for the issuance pipeline.
    serial = before[7].serial
    cdp, freshest = crl.certificate_extensions(core, "issuing-ec", serial)
    shard = crl.shard_of(serial, 4)
    assert cdp[0][0].full_name[0].value.endswith(f"/crl/issuing-ec/shard/{shard}.crl")
    assert freshest[0][0].full_name[0].value.endswith(f"/shard/{shard}/delta.crl")

    # Deltas: a new revocation appears in the delta of the whole CRL and of its shard only.
    clock.advance(minutes=10)
    revoke(core, before[8].serial_hex, reason=9, actor="t", channel="cli")
    clock.advance(minutes=10)
    new = {p.shard: p for p in crl.generate(core, issuer, delta=True)}
    assert all(p.delta for p in new.values())
    whole_delta = load(new[0].der, issuer)
    indicator = extension(whole_delta, ExtensionOID.DELTA_CRL_INDICATOR)
    assert indicator.critical and indicator.value.crl_number == complete[0].number
    crl_number = extension(whole_delta, ExtensionOID.CRL_NUMBER).value.crl_number
    assert crl_number > deltas[0].number > complete[0].number  # one sequence per scope
    assert {r.serial_number for r in whole_delta} == {before[8].serial}
    target = crl.shard_of(before[8].serial, 4)
    for shard in range(1, 5):
        parsed = load(new[shard].der, issuer)
        expected = {before[8].serial} if shard == target else set()
        assert {r.serial_number for r in parsed} == expected
        assert extension(parsed, ExtensionOID.ISSUING_DISTRIBUTION_POINT).value.full_name[
            0
        ].value == crl.crl_url(core, "issuing-ec", shard)

    # With deltas on, a revocation regenerates the deltas only.
    revoke(core, before[9].serial_hex, reason=1, actor="t", channel="cli")
    clock.advance(seconds=5)
    run_jobs(core)
    cache = crl.CRLCache(core)
    assert cache.current("issuing-ec", 0, False).number == complete[0].number
    latest_delta = load(cache.current("issuing-ec", 0, True).der, issuer)
    assert before[9].serial in {r.serial_number for r in latest_delta}
    core.close()


def test_settings_are_validated_with_the_key_named(tmp_path, sqlite_database_url, clock):
    for table, message in [
        ("[crl]\nshards = 0\n", "crl.shards"),
        ("[crl]\ndelta = 1\n", "crl.delta"),
        ('[crl]\ndelta_validity = "-5m"\n', "crl.delta_validity"),
        ("[crl]\nbogus = 1\n", "crl.bogus: unknown key"),
        ('[crl]\ndelta_validity = "30d"\n', "crl.delta_validity"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_core(tmp_path, sqlite_database_url, clock, table)


# -- HTTP ----------------------------------------------------------------------------------------


def test_crl_endpoint_serves_der_with_cache_headers_and_conditional_requests(core, clock):
    client = create_app(core=core).test_client()
    response = client.get("/crl/issuing-ec.crl")
    assert response.status_code == 200
    assert response.mimetype == "application/pkix-crl"
    parsed = load(response.data, core.issuers["issuing-ec"])
    cache_control = response.headers["Cache-Control"]
    assert "public" in cache_control and "no-transform" in cache_control
    assert "must-revalidate" in cache_control and "max-age=600" in cache_control
    assert response.headers["Last-Modified"]
    assert response.headers["Expires"]
    etag = response.headers["ETag"]
    again = client.get("/crl/issuing-ec.crl", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    since = client.get(
        "/crl/issuing-ec.crl", headers={"If-Modified-Since": response.headers["Last-Modified"]}
    )
    assert since.status_code == 304
    assert extension(parsed, ExtensionOID.CRL_NUMBER).value.crl_number == 1
    root = client.get("/crl/root.crl")
    load(root.data, core.issuers["root"])
    # The issuing CAs' certificates are the root CRL's subjects: their CDP names it.
    cdp = core.issuers["issuing-ec"].certificate.extensions.get_extension_for_class(
        x509.CRLDistributionPoints
    )
    assert cdp.value[0].full_name[0].value == "http://pki.test/crl/root.crl"
    assert_lints_clean_certificate(core.issuers["issuing-ec"].certificate_der)


@pytest.mark.parametrize(
    "path",
    [
        "/crl/nope.crl",
        "/crl/issuing-ec/delta.crl",
        "/crl/issuing-ec/shard/1.crl",
        "/crl/issuing-ec/shard/0.crl",
        "/crl/issuing-ec/shard/x.crl",
        "/crl/issuing-ec/shard/1/delta.crl",
        "/crl/issuing-ec.pem",
        "/crl/",
    ],
)
def test_unpublished_crls_are_404(core, path):
    response = create_app(core=core).test_client().get(path)
    assert response.status_code == 404
    assert response.mimetype == "text/plain"
