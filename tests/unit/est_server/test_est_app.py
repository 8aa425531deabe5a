"""The EST app in process (Flask test client) on SQLite and PostgreSQL, with software CA keys.

What a real TLS server cannot easily show is tested here: which client-certificate sources are
believed (a header only from a trusted proxy), the credential cache, label-bound credentials,
configuration errors, and the approval queue's edges. The end-to-end tests over HTTPS with curl
and openssl are in tests/integration/test_est_server.py.
"""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from ca.config import load_config
from ca.errors import ConfigError
from ca.storage.models import AuditEntryRow, CertificateRow
from ca.web.app import create_app
from est_server import users
from est_server.config import parse_settings
from tests.support.core_factory import make_core, write_config
from tests.support.pki_lint import assert_lints_clean_certificate
from tests.support.software_ca import self_signed_ca
from tests.support.software_keystore import SoftwareKeyStore

EST = "/.well-known/est"
PASSWORD = "correct horse battery staple"


def _ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    certificate, key = self_signed_ca("Unit Manufacturer CA", path_length=0)
    path = directory / "manufacturer.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate, path


def _device(ca_key: Any, ca_cert: x509.Certificate, name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )


def _csr(name: str, key: Any = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{name}.test")]), False)
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


def _basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def manufacturer(tmp_path: Path):
    return _ca(tmp_path)


@pytest.fixture
def est_app(tmp_path: Path, database_url: str, manufacturer):
    _, _, anchor = manufacturer
    extra = f"""
[frontends.est]
basic_cache_seconds = 300
password_hash = {{ memory_kib = 8192, time_cost = 1 }}
[frontends.est.labels.default]
profile = "device"
serverkeygen = true
[frontends.est.labels.other]
profile = "device"
[frontends.est.labels.factory]
profile = "device"
auth = "cert"
trust_anchors = ["{anchor}"]
[frontends.est.labels.both]
profile = "device"
auth = "both"
trust_anchors = ["{anchor}"]
[frontends.est.labels.approval]
profile = "device"
manual_approval = true
serverkeygen = true
"""
    core = make_core(
        tmp_path,
        database_url,
        SoftwareKeyStore(),
        extra=extra.replace("[server]", ""),
    )
    app = create_app(core=core)
    settings = app.extensions["privca.est"]
    yield app, core, settings
    core.close()


def _certificates(core: Any) -> int:
    with core.database.read() as session:
        return session.scalar(
            select(func.count()).select_from(CertificateRow).where(CertificateRow.channel == "est")
        )


def _issued(response: Any) -> x509.Certificate:
    from cryptography.hazmat.primitives.serialization import pkcs7

    assert response.status_code == 200, response.data
    (certificate,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(response.data))
    assert_lints_clean_certificate(certificate.public_bytes(serialization.Encoding.DER))
    return certificate


def test_client_certificate_header_is_ignored_unless_from_a_trusted_proxy(est_app, manufacturer):
    app, core, _ = est_app
    key, ca, _ = manufacturer
    device = _device(key, ca, "hdr-1")
    client = app.test_client()
    headers = {"X-SSL-Client-Cert": _pem(device).replace("\n", " ")}
    response = client.post(
        f"{EST}/factory/simpleenroll",
        data=_csr("hdr-1"),
        headers=headers,
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert response.status_code == 401
    assert _certificates(core) == 0


def test_trusted_proxy_header_is_believed(tmp_path, database_url, manufacturer):
    key, ca, anchor = manufacturer
    extra = f"""
[frontends.est.labels.factory]
profile = "device"
auth = "cert"
trust_anchors = ["{anchor}"]
"""
    path = write_config(tmp_path, database_url, extra=extra)
    text = path.read_text().replace(
        'public_base_url = "http://pki.test"',
        'public_base_url = "http://pki.test"\ntrusted_proxies = ["192.0.2.0/24"]',
    )
    path.write_text(text)
    config = load_config(path, environ={})
    from ca.bootstrap import bootstrap
    from ca.core import CACore
    from ca.storage import Database

    core, _ = bootstrap(config, CACore(config, Database(database_url), SoftwareKeyStore()))
    try:
        app = create_app(core=core)
        response = app.test_client().post(
            f"{EST}/factory/simpleenroll",
            data=_csr("hdr-2"),
            # Newlines folded into spaces, as Apache's and HAProxy's forwarding does.
            headers={"X-SSL-Client-Cert": _pem(_device(key, ca, "hdr-2")).replace("\n", " ")},
            environ_base={"REMOTE_ADDR": "192.0.2.7"},
        )
        certificate = _issued(response)
        with core.database.read() as session:
            row = session.scalars(
                select(CertificateRow).where(CertificateRow.channel == "est")
            ).one()
        assert row.owner == "est-cert:CN=hdr-2"
        assert certificate.subject.rfc4514_string() == "CN=hdr-2"
    finally:
        core.close()


def test_basic_credential_bound_to_a_label_is_refused_elsewhere(est_app):
    app, core, settings = est_app
    users.create_user(
        core, settings, "bound-1", label="other", password=PASSWORD, actor="t", channel="cli"
    )
    client = app.test_client()
    response = client.post(f"{EST}/simpleenroll", data=_csr("b1"), headers=_basic("bound-1"))
    assert response.status_code == 401
    assert (
        response.headers["WWW-Authenticate"] == 'Basic realm="privca EST default", charset="UTF-8"'
    )
    response = client.post(f"{EST}/other/simpleenroll", data=_csr("b1"), headers=_basic("bound-1"))
    _issued(response)


def test_deleted_credential_stops_working_despite_the_cache(est_app):
    app, core, settings = est_app
    users.create_user(
        core, settings, "gone-1", label=None, password=PASSWORD, actor="t", channel="cli"
    )
    client = app.test_client()
    _issued(client.post(f"{EST}/simpleenroll", data=_csr("g1"), headers=_basic("gone-1")))
    users.delete_user(core, "gone-1", actor="t", channel="cli")
    response = client.post(f"{EST}/simpleenroll", data=_csr("g1"), headers=_basic("gone-1"))
    assert response.status_code == 401
    # Re-created with another password: the cached old one must not open it.
    users.create_user(
        core,
        settings,
        "gone-1",
        label=None,
        password="another long password",
        actor="t",
        channel="cli",
    )
    response = client.post(f"{EST}/simpleenroll", data=_csr("g1"), headers=_basic("gone-1"))
    assert response.status_code == 401


def test_auth_both_needs_certificate_and_password(est_app, manufacturer):
    app, core, settings = est_app
    key, ca, _ = manufacturer
    users.create_user(
        core, settings, "both-1", label=None, password=PASSWORD, actor="t", channel="cli"
    )
    client = app.test_client()
    device = {"SSL_CLIENT_CERT": _pem(_device(key, ca, "both-1"))}
    response = client.post(f"{EST}/both/simpleenroll", data=_csr("b"), headers=_basic("both-1"))
    assert response.status_code == 401
    response = client.post(f"{EST}/both/simpleenroll", data=_csr("b"), environ_base=device)
    assert response.status_code == 401
    response = client.post(
        f"{EST}/both/simpleenroll", data=_csr("b"), headers=_basic("both-1"), environ_base=device
    )
    certificate = _issued(response)
    with core.database.read() as session:
        row = session.scalars(
            select(CertificateRow).where(
                CertificateRow.serial == format(certificate.serial_number, "x")
            )
        ).one()
    assert row.owner == "est-cert:CN=both-1" and row.requester == "est-user:both-1"


def test_reenroll_keeps_the_owner_of_the_renewed_certificate(est_app):
    app, core, settings = est_app
    users.create_user(
        core, settings, "re-1", label=None, password=PASSWORD, actor="t", channel="cli"
    )
    client = app.test_client()
    key = ec.generate_private_key(ec.SECP256R1())
    first = _issued(
        client.post(f"{EST}/simpleenroll", data=_csr("re-1", key), headers=_basic("re-1"))
    )
    response = client.post(
        f"{EST}/simplereenroll",
        data=_csr("re-1"),
        environ_base={"SSL_CLIENT_CERT": _pem(first)},
    )
    renewed = _issued(response)
    with core.database.read() as session:
        owners = set(
            session.scalars(select(CertificateRow.owner).where(CertificateRow.channel == "est"))
        )
    assert owners == {"est-user:re-1"}
    assert renewed.subject == first.subject
    # Without a client certificate there is nothing to renew.
    response = client.post(f"{EST}/simplereenroll", data=_csr("re-1"), headers=_basic("re-1"))
    assert response.status_code == 401


def test_serverkeygen_follows_the_csr_key_type_when_the_label_names_none(est_app):
    app, core, settings = est_app
    users.create_user(
        core, settings, "kg-1", label=None, password=PASSWORD, actor="t", channel="cli"
    )
    rsa_key = rsa.generate_private_key(65537, 2048)
    response = app.test_client().post(
        f"{EST}/serverkeygen", data=_csr("kg-1", rsa_key), headers=_basic("kg-1")
    )
    assert response.status_code == 200, response.data
    import email
    import email.policy

    message = email.message_from_bytes(
        f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode() + response.data,
        policy=email.policy.HTTP,
    )
    key_part, cert_part = message.iter_parts()
    key = serialization.load_der_private_key(key_part.get_payload(decode=True), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    from cryptography.hazmat.primitives.serialization import pkcs7

    (certificate,) = pkcs7.load_der_pkcs7_certificates(cert_part.get_payload(decode=True))
    assert certificate.public_key().public_numbers() == key.public_key().public_numbers()
    assert certificate.public_key().public_numbers() != rsa_key.public_key().public_numbers()


def test_held_serverkeygen_issues_once_approved_and_is_not_handed_out_twice(est_app):
    app, core, settings = est_app
    users.create_user(
        core, settings, "ap-1", label=None, password=PASSWORD, actor="t", channel="cli"
    )
    client = app.test_client()
    body = _csr("ap-1")
    response = client.post(f"{EST}/approval/serverkeygen", data=body, headers=_basic("ap-1"))
    assert response.status_code == 202 and response.headers["Retry-After"] == "60"
    from est_server import storage
    from est_server.enrollment import decide

    with core.database.read() as session:
        (held,) = storage.list_requests(session, "pending")
    decide(core, held.id, approve=True, actor="op", channel="cli", reason=None)
    response = client.post(f"{EST}/approval/serverkeygen", data=body, headers=_basic("ap-1"))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("multipart/mixed")
    # The key was never stored, so the same request again starts a new approval.
    response = client.post(f"{EST}/approval/serverkeygen", data=body, headers=_basic("ap-1"))
    assert response.status_code == 202
    with core.database.read() as session:
        actions = list(session.scalars(select(AuditEntryRow.action).order_by(AuditEntryRow.seq)))
    assert actions[-4:] == [
        "est_request_held",
        "est_request_approved",
        "certificate_issued",
        "est_request_held",
    ]


def test_deciding_a_request_twice_is_a_conflict(est_app):
    app, core, settings = est_app
    users.create_user(
        core, settings, "ap-2", label=None, password=PASSWORD, actor="t", channel="cli"
    )
    client = app.test_client()
    assert (
        client.post(
            f"{EST}/approval/simpleenroll", data=_csr("ap-2"), headers=_basic("ap-2")
        ).status_code
        == 202
    )
    from ca.errors import Conflict, NotFound
    from est_server import storage
    from est_server.enrollment import decide

    with core.database.read() as session:
        (held,) = storage.list_requests(session, "pending")
    decide(core, held.id, approve=False, actor="op", channel="cli", reason="no")
    with pytest.raises(Conflict):
        decide(core, held.id, approve=True, actor="op", channel="cli", reason=None)
    with pytest.raises(NotFound):
        decide(core, 999999, approve=True, actor="op", channel="cli", reason=None)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[frontends.est.labels.x]\nprofile = "nope"', "frontends.est.labels.x.profile"),
        ('[frontends.est.labels.x]\nprofile = "device"\nauth = "token"', "labels.x.auth"),
        ('[frontends.est.labels.x]\nprofile = "device"\nauth = "cert"', "labels.x.trust_anchors"),
        (
            '[frontends.est.labels.x]\nprofile = "device"\ntrust_anchors = ["/nonexistent.pem"]',
            "labels.x.trust_anchors: cannot read",
        ),
        ('[frontends.est.labels.x]\nprofile = "device"\ncolour = 1', "labels.x.colour: unknown"),
        ('[frontends.est.labels.x]\nprofile = "device"\nissuer = "root"', "labels.x.issuer"),
        ('[frontends.est.labels.x]\nprofile = "device"\nkey_type = "dsa"', "labels.x.key_type"),
        ('[frontends.est.labels.x]\nprofile = "device"\ncsrattrs = ["bogus"]', "labels.x.csrattrs"),
        (
            '[frontends.est.labels.x]\nprofile = "device"\nretry_after = "-1"',
            "labels.x.retry_after",
        ),
        ('[frontends.est.labels.simpleenroll]\nprofile = "device"', "labels.simpleenroll"),
        ('[frontends.est]\ndefault_label = "missing"', "frontends.est.default_label"),
        ("[frontends.est]\nbasic_cache_seconds = -1", "frontends.est.basic_cache_seconds"),
        ("[frontends.est]\nbasic_recheck_seconds = true", "frontends.est.basic_recheck_seconds"),
        ("[frontends.est]\nbasic_recheck_seconds = 3601", "frontends.est.basic_recheck_seconds"),
    ],
)
def test_configuration_errors_name_the_key(tmp_path, table: str, message: str):
    config = load_config(write_config(tmp_path, "sqlite:///unused.db", extra=table), environ={})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_settings(config)


def test_label_trust_anchors_reach_the_tls_client_bundle(est_app, manufacturer):
    app, _, _ = est_app
    _, ca, _ = manufacturer
    bundle = b"".join(app.extensions["privca.tls_client_anchors"])
    assert ca.public_bytes(serialization.Encoding.PEM) in bundle


# --- fuzzed requests -------------------------------------------------------------------------

_FUZZ = settings(
    max_examples=int(os.environ.get("PRIVCA_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize="PRIVCA_FUZZ_EXAMPLES" not in os.environ,  # CI must not pass or fail by luck
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_GOOD_DER = base64.b64decode(_csr("fuzz"))


@st.composite
def _mangled_csr(draw: st.DrawFn) -> bytes:
    """A real CSR's DER with bytes changed, cut short or extended, as base64 or as raw DER."""
    der = bytearray(_GOOD_DER)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(der) - 1))
        der[position] = draw(st.integers(0, 255))
    der = der[: draw(st.integers(0, len(der)))] + draw(st.binary(max_size=8))
    return base64.b64encode(bytes(der)) if draw(st.booleans()) else bytes(der)


_BODIES = _mangled_csr() | st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            ["application/pkcs10", "application/pkcs7-mime", "text/plain", "", "x/y; a=\x7f"]
        ),
        "Content-Transfer-Encoding": st.sampled_from(["base64", "binary", "gzip", ""]),
    },
)


# simplereenroll needs a client certificate, which the test client does not present: the
# end-to-end tests over TLS cover it.
@pytest.mark.parametrize("operation", ["simpleenroll", "serverkeygen"])
def test_fuzzed_enrolment_bodies_get_an_est_error_never_a_server_error(est_app, operation):
    app, core, settings_ = est_app
    users.create_user(
        core, settings_, "fuzz-1", password=PASSWORD, actor="t", channel="cli", label=None
    )
    client = app.test_client()

    @_FUZZ
    @given(body=_BODIES, headers=_HEADERS)
    def post(body: bytes, headers: dict[str, str]) -> None:
        response = client.post(
            f"{EST}/{operation}", data=body, headers={**_basic("fuzz-1"), **headers}
        )
        assert response.status_code < 500, response.data[:300]
        if response.status_code >= 400:
            assert response.mimetype == "text/plain", response.headers

    post()
