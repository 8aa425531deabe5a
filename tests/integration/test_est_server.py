"""EST end to end: a real `privca serve` over HTTPS, curl and openssl as the device, both databases.

One server per database serves every test of this module (starting one costs a token and CA
keys); each test uses its own credentials, keys and names, so the tests do not interfere.
Labels: "default" (Basic, serverkeygen, csrattrs), "factory" (bootstrap client certificates from
a test manufacturer CA), "other" (another manufacturer), "approval" (manual approval), "bound"
(tls-unique channel binding), "plain" (no csrattrs). 127.0.0.1 is a trusted proxy, so the header
path is tested here and the untrusted case in the unit tests.
"""

from __future__ import annotations

import base64
import email
import email.policy
import http.client
import json
import ssl
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import core as asn1
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import create_engine, func, select

from ca.storage.models import CertificateRow
from tests.conftest import module_database
from tests.integration.server import RunningServer, start_server
from tests.support.pki_lint import assert_lints_clean_certificate

pytestmark = pytest.mark.integration

EST = "/.well-known/est"


# -- a test manufacturer (IDevID issuer) ---------------------------------------------------------


@dataclass
class Manufacturer:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    pem_path: Path

    def device(
        self, directory: Path, name: str, *, expired: bool = False
    ) -> tuple[Path, Path, x509.Certificate]:
        """A device certificate and key under this manufacturer, as PEM files for curl."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        start, end = (
            (now - timedelta(days=30), now - timedelta(days=1))
            if expired
            else (
                now - timedelta(minutes=5),
                now + timedelta(days=3650),
            )
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Devices"),
                        x509.NameAttribute(NameOID.SERIAL_NUMBER, name),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{name}.idevid.pem", directory / f"{name}.idevid.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path, certificate


def make_manufacturer(directory: Path, name: str) -> Manufacturer:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Manufacturer CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}-ca.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Manufacturer(key, certificate, path)


@dataclass
class ESTServer:
    server: RunningServer
    database_url: str
    directory: Path
    factory: Manufacturer
    other: Manufacturer


def est_config(factory: Manufacturer, other: Manufacturer) -> str:
    return f"""
[frontends.est]
default_label = "default"
[frontends.est.labels.default]
profile = "device"
auth = "basic"
serverkeygen = true
key_type = "ec-p256"
csrattrs = ["challengePassword", "macAddress"]
[frontends.est.labels.factory]
profile = "device"
auth = "cert"
trust_anchors = ["{factory.pem_path}"]
[frontends.est.labels.other]
profile = "device"
auth = "cert"
trust_anchors = ["{other.pem_path}"]
[frontends.est.labels.approval]
profile = "device"
auth = "basic"
manual_approval = true
retry_after = "30s"
serverkeygen = true
[frontends.est.labels.bound]
profile = "device"
auth = "basic"
require_channel_binding = true
[frontends.est.labels.plain]
profile = "device"
auth = "any"
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def est(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp(f"est-{request.param}")
    factory = make_manufacturer(directory, "factory")
    other = make_manufacturer(directory, "other")
    with module_database(request, directory) as url:
        # start_server writes the [server] table itself: the proxy settings come through the
        # environment overrides instead.
        running = start_server(
            directory,
            url,
            extra=est_config(factory, other),
            env={
                "PRIVCA_SERVER__TRUSTED_PROXIES": '["127.0.0.1"]',
                "PRIVCA_SERVER__CLIENT_CERT_HEADER": '"X-SSL-Client-Cert"',
            },
        )
        try:
            yield ESTServer(running, url, directory, factory, other)
        finally:
            running.stop()


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def curl(est: ESTServer, path: str, *args: str, work: Path) -> Reply:
    """One request with curl; headers lower-cased (the last response's, after any 100)."""
    tag = uuid.uuid4().hex[:8]
    head, body = work / f"h-{tag}", work / f"b-{tag}"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            str(est.server.root_pem),
            "-D",
            str(head),
            "-o",
            str(body),
            "-w",
            "%{http_code}",
            *args,
            est.server.base_url + path,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, f"curl failed: {result.stderr}"
    blocks = head.read_text().replace("\r\n", "\n").strip().split("\n\n")
    headers = {}
    for line in blocks[-1].split("\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(result.stdout), headers, body.read_bytes())


def openssl(*args: str, input: bytes | None = None) -> bytes:
    result = subprocess.run(
        ["openssl", *args], input=input, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def make_csr(work: Path, name: str, *, san: str | None = None, subj: str | None = None) -> Path:
    """An openssl-made P-256 key and CSR; returns the base64 DER CSR file (what EST posts)."""
    key, der = work / f"{name}.key", work / f"{name}.csr.der"
    openssl(
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        str(key),
        "-subj",
        subj or f"/CN={name}",
        "-addext",
        f"subjectAltName={san or 'DNS:' + name + '.devices.test'}",
        "-outform",
        "DER",
        "-out",
        str(der),
    )
    b64 = work / f"{name}.csr.b64"
    b64.write_bytes(openssl("base64", "-in", str(der)))
    return b64


def certificates_from(reply: Reply, work: Path) -> list[x509.Certificate]:
    """The certificates of a certs-only reply, read by openssl pkcs7 as a device would."""
    assert (
        reply.header(
            "content-type",
        )
        is not None
    )
    der = base64.b64decode(reply.body)
    pem = openssl("pkcs7", "-print_certs", "-inform", "DER", input=der)
    return x509.load_pem_x509_certificates(pem)


def verify_with_openssl(est: ESTServer, certificate: x509.Certificate, work: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    leaf, chain = work / f"leaf-{tag}.pem", work / f"chain-{tag}.pem"
    leaf.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    chain.write_bytes((est.server.data_dir / "tls" / "root.pem").read_bytes())
    status, _, body = est.server.request("GET", "/ca/issuing-ec/chain.pem")
    assert status == 200
    untrusted = work / f"untrusted-{tag}.pem"
    untrusted.write_bytes(body)
    output = openssl(
        "verify",
        "-CAfile",
        str(est.server.root_pem),
        "-untrusted",
        str(untrusted),
        "-purpose",
        "sslclient",
        str(leaf),
    )
    assert b": OK" in output
    assert_lints_clean_certificate(certificate.public_bytes(serialization.Encoding.DER))


def make_user(est: ESTServer, name: str, label: str | None = None) -> str:
    args = ["est", "user", "create", name]
    if label:
        args += ["--label", label]
    return est.server.cli(*args).stdout.strip()


def certificate_count(est: ESTServer) -> int:
    """Certificates EST asked for (the server also issues its own, e.g. OCSP responder ones)."""
    engine = create_engine(est.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            return connection.execute(
                select(func.count())
                .select_from(CertificateRow)
                .where(CertificateRow.channel == "est")
            ).scalar_one()
    finally:
        engine.dispose()


def enroll_headers(user: str, password: str) -> list[str]:
    return ["-u", f"{user}:{password}", "-H", "Content-Type: application/pkcs10"]


# -- the protocol -------------------------------------------------------------------------------


def test_cacerts_returns_the_issuing_chain_as_base64_certs_only_cms(est: ESTServer, tmp_path):
    reply = curl(est, f"{EST}/cacerts", work=tmp_path)
    assert reply.status == 200
    assert reply.header("content-type").startswith("application/pkcs7-mime")
    assert reply.header("content-transfer-encoding") == "base64"
    assert int(reply.header("content-length")) == len(reply.body)
    assert all(len(line) <= 64 for line in reply.body.split(b"\n"))
    certificates = certificates_from(reply, tmp_path)
    subjects = {c.subject.rfc4514_string() for c in certificates}
    assert subjects == {"CN=privca Issuing CA EC,O=privca", "CN=privca Root CA,O=privca"}
    labelled = curl(est, f"{EST}/factory/cacerts", work=tmp_path)
    assert labelled.status == 200 and labelled.body == reply.body


def test_simpleenroll_with_basic_issues_a_verifiable_certificate_owned_by_the_user(
    est: ESTServer, tmp_path
):
    password = make_user(est, "basic-dev-1")
    csr = make_csr(tmp_path, "basic-dev-1")
    reply = curl(
        est,
        f"{EST}/simpleenroll",
        *enroll_headers("basic-dev-1", password),
        "--data-binary",
        f"@{csr}",
        work=tmp_path,
    )
    assert reply.status == 200, reply.body
    assert reply.header("content-type") == "application/pkcs7-mime; smime-type=certs-only"
    assert reply.header("content-transfer-encoding") == "base64"
    assert int(reply.header("content-length")) == len(reply.body)
    lines = reply.body.rstrip(b"\n").split(b"\n")
    assert all(len(line) == 64 for line in lines[:-1]) and 0 < len(lines[-1]) <= 64
    (certificate,) = certificates_from(reply, tmp_path)
    assert certificate.subject.rfc4514_string() == "CN=basic-dev-1"
    verify_with_openssl(est, certificate, tmp_path)
    listed = json.loads(
        est.server.cli("certs", "list", "--owner", "est-user:basic-dev-1", "--json").stdout
    )
    assert [row["serial"] for row in listed] == [format(certificate.serial_number, "x")]
    # The key in the certificate is the one openssl made for the CSR.
    key_pub = openssl("pkey", "-in", str(tmp_path / "basic-dev-1.key"), "-pubout")
    assert key_pub == certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_simpleenroll_accepts_one_line_base64_pem_and_a_cte_header(est: ESTServer, tmp_path):
    password = make_user(est, "basic-dev-2")
    csr = make_csr(tmp_path, "basic-dev-2")
    der = base64.b64decode(csr.read_bytes())
    one_line = tmp_path / "one-line.b64"
    one_line.write_bytes(base64.b64encode(der))
    pem = tmp_path / "csr.pem"
    pem.write_bytes(openssl("req", "-inform", "DER", "-in", str(tmp_path / "basic-dev-2.csr.der")))
    for body, extra in (
        (one_line, ["-H", "Content-Transfer-Encoding: base64"]),
        (csr, []),
        (pem, []),
    ):
        reply = curl(
            est,
            f"{EST}/default/simpleenroll",
            *enroll_headers("basic-dev-2", password),
            *extra,
            "--data-binary",
            f"@{body}",
            work=tmp_path,
        )
        assert reply.status == 200, reply.body
        (certificate,) = certificates_from(reply, tmp_path)
        assert_lints_clean_certificate(certificate.public_bytes(serialization.Encoding.DER))


def test_bootstrap_client_certificate_enrolls_then_the_certificate_reenrolls(
    est: ESTServer, tmp_path
):
    idevid, idevid_key, idevid_cert = est.factory.device(tmp_path, "SN-0001")
    csr = make_csr(tmp_path, "sn-0001", subj="/CN=sn-0001")
    reply = curl(
        est,
        f"{EST}/factory/simpleenroll",
        "--cert",
        str(idevid),
        "--key",
        str(idevid_key),
        "--data-binary",
        f"@{csr}",
        "-H",
        "Content-Type: application/pkcs10",
        work=tmp_path,
    )
    assert reply.status == 200, reply.body
    (ldevid,) = certificates_from(reply, tmp_path)
    verify_with_openssl(est, ldevid, tmp_path)
    owner = "est-cert:" + idevid_cert.subject.rfc4514_string()
    listed = json.loads(est.server.cli("certs", "list", "--owner", owner, "--json").stdout)
    assert [row["serial"] for row in listed] == [format(ldevid.serial_number, "x")]

    # Re-enroll with the certificate just issued: same names, new key, same owner.
    ldevid_pem = tmp_path / "ldevid.pem"
    ldevid_pem.write_bytes(ldevid.public_bytes(serialization.Encoding.PEM))
    renewal = make_csr(tmp_path, "sn-0001-new", subj="/CN=sn-0001", san="DNS:sn-0001.devices.test")
    reply = curl(
        est,
        f"{EST}/factory/simplereenroll",
        "--cert",
        str(ldevid_pem),
        "--key",
        str(tmp_path / "sn-0001.key"),
        "--data-binary",
        f"@{renewal}",
        work=tmp_path,
    )
    assert reply.status == 200, reply.body
    (renewed,) = certificates_from(reply, tmp_path)
    verify_with_openssl(est, renewed, tmp_path)
    assert renewed.subject == ldevid.subject and renewed.serial_number != ldevid.serial_number
    listed = json.loads(est.server.cli("certs", "list", "--owner", owner, "--json").stdout)
    assert len(listed) == 2

    # A change of names is refused on a label that does not allow it.
    before = certificate_count(est)
    changed = make_csr(tmp_path, "sn-0001-other", subj="/CN=someone-else")
    reply = curl(
        est,
        f"{EST}/factory/simplereenroll",
        "--cert",
        str(ldevid_pem),
        "--key",
        str(tmp_path / "sn-0001.key"),
        "--data-binary",
        f"@{changed}",
        work=tmp_path,
    )
    assert reply.status == 403
    assert b"subject and subjectAltName" in reply.body
    assert certificate_count(est) == before

    # The manufacturer certificate cannot re-enroll (it is not ours) ...
    reply = curl(
        est,
        f"{EST}/factory/simplereenroll",
        "--cert",
        str(idevid),
        "--key",
        str(idevid_key),
        "--data-binary",
        f"@{renewal}",
        work=tmp_path,
    )
    assert reply.status == 403 and b"issued by this CA" in reply.body

    # ... and after revocation, the LDevID cannot either.
    est.server.cli("revoke", format(ldevid.serial_number, "x"), "--reason", "superseded")
    reply = curl(
        est,
        f"{EST}/factory/simplereenroll",
        "--cert",
        str(ldevid_pem),
        "--key",
        str(tmp_path / "sn-0001.key"),
        "--data-binary",
        f"@{renewal}",
        work=tmp_path,
    )
    assert reply.status == 403 and b"revoked" in reply.body
    assert certificate_count(est) == before


def test_client_certificate_of_another_labels_manufacturer_is_refused(est: ESTServer, tmp_path):
    idevid, idevid_key, _ = est.other.device(tmp_path, "OTHER-1")
    csr = make_csr(tmp_path, "other-1")
    before = certificate_count(est)
    common = ["--cert", str(idevid), "--key", str(idevid_key), "--data-binary", f"@{csr}"]
    reply = curl(est, f"{EST}/factory/simpleenroll", *common, work=tmp_path)
    assert reply.status == 403 and b"trust anchor" in reply.body
    assert reply.header("content-type").startswith("text/plain")
    reply = curl(est, f"{EST}/other/simpleenroll", *common, work=tmp_path)
    assert reply.status == 200
    assert certificate_count(est) == before + 1


def test_an_expired_client_certificate_over_tls_gets_403_with_the_reason(est: ESTServer, tmp_path):
    """The TLS layer checks the chain but not the clock, so the device reads why it was refused
    instead of a bare handshake alert; nothing is issued."""
    idevid, idevid_key, _ = est.factory.device(tmp_path, "EXPIRED-1", expired=True)
    csr = make_csr(tmp_path, "expired-1")
    before = certificate_count(est)
    common = ["--cert", str(idevid), "--key", str(idevid_key), "--data-binary", f"@{csr}"]
    reply = curl(est, f"{EST}/factory/simpleenroll", *common, work=tmp_path)
    assert reply.status == 403 and b"expired" in reply.body
    assert certificate_count(est) == before


def test_client_certificate_from_a_trusted_proxy_header_is_checked_like_a_tls_one(
    est: ESTServer, tmp_path
):
    _, _, good = est.factory.device(tmp_path, "PROXY-1")
    _, _, expired = est.factory.device(tmp_path, "PROXY-2", expired=True)
    csr = make_csr(tmp_path, "proxy-1")

    def header(certificate: x509.Certificate) -> str:
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        from urllib.parse import quote

        return "X-SSL-Client-Cert: " + quote(pem)  # nginx's $ssl_client_escaped_cert

    reply = curl(
        est,
        f"{EST}/factory/simpleenroll",
        "-H",
        header(good),
        "--data-binary",
        f"@{csr}",
        work=tmp_path,
    )
    assert reply.status == 200, reply.body
    before = certificate_count(est)
    reply = curl(
        est,
        f"{EST}/factory/simpleenroll",
        "-H",
        header(expired),
        "--data-binary",
        f"@{csr}",
        work=tmp_path,
    )
    assert reply.status == 403 and b"expired" in reply.body
    assert certificate_count(est) == before


def test_csrattrs_is_csrattrs_der_or_204(est: ESTServer, tmp_path):
    reply = curl(est, f"{EST}/csrattrs", work=tmp_path)
    assert reply.status == 200
    assert reply.header("content-type") == "application/csrattrs"
    assert reply.header("content-transfer-encoding") == "base64"
    der = base64.b64decode(reply.body)
    parsed = openssl("asn1parse", "-inform", "DER", input=der).decode()
    for expected in ("id-ecPublicKey", "prime256v1", "ecdsa-with-SHA256", "challengePassword"):
        assert expected in parsed
    assert "1.3.6.1.1.1.1.22" in parsed or "macAddress" in parsed
    assert isinstance(asn1.load(der), asn1.Sequence)
    empty = curl(est, f"{EST}/plain/csrattrs", work=tmp_path)
    assert empty.status == 204 and empty.body == b""


def test_serverkeygen_returns_a_key_that_matches_its_certificate(est: ESTServer, tmp_path):
    password = make_user(est, "keygen-dev-1")
    csr = make_csr(tmp_path, "keygen-dev-1")
    reply = curl(
        est,
        f"{EST}/serverkeygen",
        *enroll_headers("keygen-dev-1", password),
        "--data-binary",
        f"@{csr}",
        work=tmp_path,
    )
    assert reply.status == 200, reply.body
    content_type = reply.header("content-type")
    assert content_type.startswith("multipart/mixed; boundary=")
    boundary = content_type.split("boundary=", 1)[1]
    assert reply.body.endswith(f"--{boundary}--".encode())
    assert int(reply.header("content-length")) == len(reply.body)
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + reply.body, policy=email.policy.HTTP
    )
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
    key_der = parts[0].get_payload(decode=True)
    cert_der = parts[1].get_payload(decode=True)
    key_path = tmp_path / "server.key.der"
    key_path.write_bytes(key_der)
    key_pub = openssl("pkey", "-inform", "DER", "-in", str(key_path), "-pubout")
    certs = x509.load_pem_x509_certificates(
        openssl("pkcs7", "-print_certs", "-inform", "DER", input=cert_der)
    )
    assert len(certs) == 1
    cert_path = tmp_path / "server.crt"
    cert_path.write_bytes(certs[0].public_bytes(serialization.Encoding.PEM))
    assert key_pub == openssl("x509", "-in", str(cert_path), "-pubkey", "-noout")
    assert isinstance(certs[0].public_key(), ec.EllipticCurvePublicKey)
    # The CSR's own key was not used: the server made a new one.
    csr_key_pub = openssl("pkey", "-in", str(tmp_path / "keygen-dev-1.key"), "-pubout")
    assert csr_key_pub != key_pub
    verify_with_openssl(est, certs[0], tmp_path)


def test_manual_approval_round_trip(est: ESTServer, tmp_path):
    password = make_user(est, "approval-dev-1", label="approval")
    csr = make_csr(tmp_path, "approval-dev-1")
    args = [*enroll_headers("approval-dev-1", password), "--data-binary", f"@{csr}"]
    before = certificate_count(est)
    reply = curl(est, f"{EST}/approval/simpleenroll", *args, work=tmp_path)
    assert reply.status == 202 and reply.header("retry-after") == "30"
    assert int(reply.header("content-length")) == len(reply.body)
    again = curl(est, f"{EST}/approval/simpleenroll", *args, work=tmp_path)
    assert again.status == 202
    held = json.loads(est.server.cli("est", "requests", "--status", "pending", "--json").stdout)
    (mine,) = [r for r in held if r["owner"] == "est-user:approval-dev-1"]
    assert mine["subject"] == "CN=approval-dev-1"
    assert certificate_count(est) == before
    est.server.cli("est", "approve", str(mine["id"]))
    reply = curl(est, f"{EST}/approval/simpleenroll", *args, work=tmp_path)
    assert reply.status == 200, reply.body
    (certificate,) = certificates_from(reply, tmp_path)
    verify_with_openssl(est, certificate, tmp_path)
    # Asking again (a lost answer) hands out the same certificate, not a second one.
    reply = curl(est, f"{EST}/approval/simpleenroll", *args, work=tmp_path)
    assert reply.status == 200
    assert certificates_from(reply, tmp_path) == [certificate]
    assert certificate_count(est) == before + 1

    # Rejection through the admin API: the device's retry gets a 403 with the reason.
    other = make_csr(tmp_path, "approval-dev-1b")
    args = [*enroll_headers("approval-dev-1", password), "--data-binary", f"@{other}"]
    assert curl(est, f"{EST}/approval/simpleenroll", *args, work=tmp_path).status == 202
    token = est.server.admin_token("admin")
    status, listing = est.server.json("GET", "/api/v1/est/requests?status=pending", token=token)
    assert status == 200
    (pending,) = [r for r in listing["requests"] if r["subject"] == "CN=approval-dev-1b"]
    status, decided = est.server.json(
        "POST",
        f"/api/v1/est/requests/{pending['id']}/reject",
        {"reason": "unknown serial"},
        token=token,
    )
    assert status == 200 and decided["status"] == "rejected"
    reply = curl(est, f"{EST}/approval/simpleenroll", *args, work=tmp_path)
    assert reply.status == 403 and b"unknown serial" in reply.body
    assert certificate_count(est) == before + 1


def test_channel_binding_with_tls_unique_on_tls12(est: ESTServer, tmp_path):
    password = make_user(est, "bound-dev-1", label="bound")
    auth = "Basic " + base64.b64encode(f"bound-dev-1:{password}".encode()).decode()

    def post(context: ssl.SSLContext, challenge: str | None) -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", est.server.port, context=context, timeout=30
        )
        connection.connect()
        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        binding = sock.get_channel_binding("tls-unique") if sock.version() == "TLSv1.2" else None
        key = ec.generate_private_key(ec.SECP256R1())
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bound-dev-1")])
        )
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("bound-dev-1.devices.test")]), False
        )
        value = challenge if challenge is not None else base64.b64encode(binding or b"").decode()
        builder = builder.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, value.encode())
        der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        connection.request(
            "POST",
            f"{EST}/bound/simpleenroll",
            body=base64.b64encode(der),
            headers={"Authorization": auth, "Content-Type": "application/pkcs10"},
        )
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body

    tls12 = est.server.ssl_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    status, body = post(tls12, None)
    assert status == 200, body
    status, body = post(tls12, "not-the-binding")
    assert status == 403 and b"tls-unique" in body
    tls13 = est.server.ssl_context()
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    status, body = post(tls13, "anything")
    assert status == 403 and b"TLS 1.2" in body


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_gets_est_errors_and_writes_nothing(est: ESTServer, tmp_path):
    password = make_user(est, "bad-dev-1")
    good = make_csr(tmp_path, "bad-dev-1")
    auth = enroll_headers("bad-dev-1", password)
    before = certificate_count(est)

    reply = curl(est, f"{EST}/simpleenroll", "--data-binary", f"@{good}", work=tmp_path)
    assert reply.status == 401
    assert reply.header("www-authenticate").startswith('Basic realm="')
    reply = curl(
        est,
        f"{EST}/simpleenroll",
        *enroll_headers("bad-dev-1", "wrong-password-123"),
        "--data-binary",
        f"@{good}",
        work=tmp_path,
    )
    assert reply.status == 401 and reply.header("www-authenticate")
    reply = curl(
        est,
        f"{EST}/simpleenroll",
        *enroll_headers("nobody", "wrong-password-123"),
        "--data-binary",
        f"@{good}",
        work=tmp_path,
    )
    assert reply.status == 401

    cases: list[tuple[bytes, int, bytes]] = [
        (b"this is not base64 !!!", 400, b"base64"),
        (base64.b64encode(b"\x30\x03\x02\x01\x00"), 400, b"PKCS#10"),
        (b"", 400, b"empty"),
    ]
    # A CSR whose signature does not verify: flip a byte of the signature.
    der = bytearray(base64.b64decode(good.read_bytes()))
    der[-5] ^= 0xFF
    cases.append((base64.b64encode(bytes(der)), 400, b"signature"))
    # Policy: the device profile takes no email names.
    email_csr = make_csr(tmp_path, "bad-email", san="email:someone@example.com")
    cases.append((email_csr.read_bytes(), 403, b"does not allow email"))
    for number, (body, status, words) in enumerate(cases):
        path = tmp_path / f"case-{number}"
        path.write_bytes(body)
        reply = curl(est, f"{EST}/simpleenroll", *auth, "--data-binary", f"@{path}", work=tmp_path)
        assert reply.status == status, (number, reply.body)
        assert words in reply.body, (number, reply.body)
        assert reply.header("content-type") == "text/plain; charset=utf-8"
        assert int(reply.header("content-length")) == len(reply.body)

    reply = curl(
        est, f"{EST}/nolabel/simpleenroll", *auth, "--data-binary", f"@{good}", work=tmp_path
    )
    assert reply.status == 404 and b"no EST label" in reply.body
    reply = curl(est, f"{EST}/nolabel/cacerts", work=tmp_path)
    assert reply.status == 404
    reply = curl(est, f"{EST}/simpleenroll", work=tmp_path)  # GET
    assert reply.status == 405 and reply.header("content-type").startswith("text/plain")
    assert "POST" in reply.header("allow")  # RFC 9110 §15.5.6
    big = tmp_path / "big"
    big.write_bytes(b"A" * 200_000)
    reply = curl(est, f"{EST}/simpleenroll", *auth, "--data-binary", f"@{big}", work=tmp_path)
    assert reply.status == 413 and reply.header("content-type").startswith("text/plain")
    reply = curl(est, f"{EST}/fullcmc", "--data-binary", f"@{good}", work=tmp_path)
    assert reply.status == 501 and b"not implemented" in reply.body
    reply = curl(est, f"{EST}/factory/serverkeygen", "--data-binary", f"@{good}", work=tmp_path)
    assert reply.status == 501

    assert certificate_count(est) == before
    assert "Traceback" not in est.server.log()


def test_keep_alive_connection_serves_several_enrollments(est: ESTServer, tmp_path):
    password = make_user(est, "keepalive-dev-1")
    auth = "Basic " + base64.b64encode(f"keepalive-dev-1:{password}".encode()).decode()
    connection = http.client.HTTPSConnection(
        "127.0.0.1", est.server.port, context=est.server.ssl_context(), timeout=30
    )
    peers = set()
    for number in range(3):
        key = ec.generate_private_key(ec.SECP256R1())
        der = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ka-{number}")]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        connection.request(
            "POST",
            f"{EST}/simpleenroll",
            body=base64.b64encode(der),
            headers={"Authorization": auth},
        )
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") is not None
        assert response.getheader("Transfer-Encoding") is None
        response.read()
        peers.add(connection.sock.getsockname() if connection.sock else None)
    connection.close()
    assert len(peers) == 1  # one connection carried all three


def test_admin_api_manages_basic_credentials(est: ESTServer):
    token = est.server.admin_token("admin")
    status, created = est.server.json(
        "POST", "/api/v1/est/users", {"username": "api-dev-1", "label": "default"}, token=token
    )
    assert status == 201 and len(created["password"]) >= 20
    status, listing = est.server.json("GET", "/api/v1/est/users", token=token)
    assert status == 200
    assert "password" not in json.dumps(listing) and "argon2" not in json.dumps(listing)
    assert any(u["username"] == "api-dev-1" for u in listing["users"])
    status, _ = est.server.json("POST", "/api/v1/est/users", {"username": "api-dev-1"}, token=token)
    assert status == 409
    status, _ = est.server.json("POST", "/api/v1/est/users", {"username": "x"}, token=None)
    assert status == 401
    status, _ = est.server.json("DELETE", "/api/v1/est/users/api-dev-1", token=token)
    assert status == 200
    status, _ = est.server.json("DELETE", "/api/v1/est/users/api-dev-1", token=token)
    assert status == 404
