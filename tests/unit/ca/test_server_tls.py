"""The TLS context `privca serve` hands gunicorn: built once per process and per version of the
certificate files, and letting an expired client certificate through to the application (EST
answers it with 403 and the reason) while still refusing one from an unknown issuer."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.serve import server_tls_context

NOW = datetime.now(UTC)


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey],
    *,
    ca: bool,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    return builder.sign(issuer[1], hashes.SHA256())


def _pem(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    data = certificate.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return data


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("server-tls")
    valid = (NOW - timedelta(days=1), NOW + timedelta(days=10))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(
        "client CA", ca_key, ("client CA", ca_key), ca=True, not_before=valid[0], not_after=valid[1]
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        "localhost",
        server_key,
        ("client CA", ca_key),
        ca=False,
        not_before=valid[0],
        not_after=valid[1],
    )
    expired_key = ec.generate_private_key(ec.SECP256R1())
    expired = _certificate(
        "device",
        expired_key,
        ("client CA", ca_key),
        ca=False,
        not_before=NOW - timedelta(days=5),
        not_after=NOW - timedelta(days=1),
    )
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _certificate(
        "device",
        stranger_key,
        ("client CA", stranger_key),
        ca=False,
        not_before=valid[0],
        not_after=valid[1],
    )
    paths = {
        "ca": root / "ca.pem",
        "server": root / "server.pem",
        "expired": root / "expired.pem",
        "stranger": root / "stranger.pem",
    }
    paths["ca"].write_bytes(_pem(ca))
    paths["server"].write_bytes(_pem(server, server_key))
    paths["expired"].write_bytes(_pem(expired, expired_key))
    paths["stranger"].write_bytes(_pem(stranger, stranger_key))
    return SimpleNamespace(**paths, expired_der=expired.public_bytes(serialization.Encoding.DER))


def _conf(pki: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(certfile=str(pki.server), keyfile=str(pki.server), ca_certs=str(pki.ca))


def _factory(conf: SimpleNamespace, built: list[ssl.SSLContext]) -> Any:
    """gunicorn's default factory, as gunicorn.sock builds it, counting what it builds."""

    def build() -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=conf.ca_certs)
        context.load_cert_chain(certfile=conf.certfile, keyfile=conf.keyfile)
        context.verify_mode = ssl.CERT_OPTIONAL
        built.append(context)
        return context

    return build


def _handshake(context: ssl.SSLContext, ca: Path, client: Path) -> dict[str, Any]:
    """One TLS handshake on loopback; what the server side saw."""
    seen: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    seen["peer"] = tls.getpeercert(binary_form=True)
                    tls.sendall(b"x")
            except ssl.SSLError as exc:
                seen["error"] = exc.reason
                connection.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_context = ssl.create_default_context(cafile=str(ca))
        client_context.load_cert_chain(str(client))
        try:
            with client_context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=10),
                server_hostname="localhost",
            ) as tls:
                tls.recv(1)
        except (ssl.SSLError, ConnectionError):
            pass  # the server's verdict is what the test reads
        thread.join(10)
    return seen


def test_an_expired_client_certificate_reaches_the_application(pki: SimpleNamespace):
    built: list[ssl.SSLContext] = []
    conf = _conf(pki)
    context = server_tls_context(conf, _factory(conf, built))
    seen = _handshake(context, pki.ca, pki.expired)
    assert seen.get("peer") == pki.expired_der


def test_a_client_certificate_from_an_unknown_issuer_is_still_refused(pki: SimpleNamespace):
    conf = _conf(pki)
    context = server_tls_context(conf, _factory(conf, []))
    seen = _handshake(context, pki.ca, pki.stranger)
    assert "peer" not in seen and seen.get("error") == "CERTIFICATE_VERIFY_FAILED"


def test_the_context_is_built_once_per_version_of_the_files(pki: SimpleNamespace):
    built: list[ssl.SSLContext] = []
    conf = _conf(pki)
    first = server_tls_context(conf, _factory(conf, built))
    assert server_tls_context(conf, _factory(conf, built)) is first
    stat = pki.server.stat()
    os.utime(pki.server, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert server_tls_context(conf, _factory(conf, built)) is not first
