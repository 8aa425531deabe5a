"""OCSP end to end through a real `privca serve`: openssl ocsp (POST, nonce, verification against
the delegated responder's chain), curl GET, revocation visible within a second, pkilint."""

from __future__ import annotations

import base64
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from tests.integration.server import RunningServer
from tests.support.pki_lint import assert_lints_clean_ocsp_response

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def issue(server: RunningServer, directory: Path, name: str) -> tuple[Path, Path, Path, int]:
    """Issue through the CLI; returns leaf, issuer, CA bundle paths and the serial."""
    key, csr, chain = (
        directory / f"{name}.key",
        directory / f"{name}.csr",
        directory / f"{name}.pem",
    )
    made = run(
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-subj", f"/CN={name}",
        "-addext", f"subjectAltName=DNS:{name}", "-out", str(csr),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    server.cli("issue", "--csr", str(csr), "--profile", "tls-server", "--out", str(chain))
    certificates = x509.load_pem_x509_certificates(chain.read_bytes())
    leaf, issuer, bundle = (directory / f"{name}.{part}.pem" for part in ("leaf", "issuer", "cas"))
    leaf.write_bytes(certificates[0].public_bytes(Encoding.PEM))
    issuer.write_bytes(certificates[1].public_bytes(Encoding.PEM))
    bundle.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certificates[1:]))
    return leaf, issuer, bundle, certificates[0].serial_number


def openssl_ocsp(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run("openssl", "ocsp", "-url", f"{server.base_url}/ocsp", "-timeout", "20", *args)


def test_openssl_and_curl_against_the_responder(server: RunningServer, tmp_path: Path):
    leaf, issuer, bundle, _serial = issue(server, tmp_path, "good.example.test")
    revoked_leaf, _, _, revoked_serial = issue(server, tmp_path, "bad.example.test")
    response_file = tmp_path / "response.der"

    # POST with a nonce (openssl's default), verified against the CA chain.
    good = openssl_ocsp(
        server, "-issuer", str(issuer), "-cert", str(leaf), "-CAfile", str(bundle),
        "-respout", str(response_file),
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert "Response verify OK" in good.stderr
    assert f"{leaf}: good" in good.stdout and "WARNING" not in good.stderr
    parsed = ocsp.load_der_ocsp_response(response_file.read_bytes())
    assert parsed.extensions.get_extension_for_class(x509.OCSPNonce)
    assert_lints_clean_ocsp_response(response_file.read_bytes())
    # The delegated responder certificate itself can be the trust anchor (-VAfile).
    responder = tmp_path / "responder.pem"
    responder.write_bytes(parsed.certificates[0].public_bytes(Encoding.PEM))
    by_responder = openssl_ocsp(
        server, "-issuer", str(issuer), "-cert", str(leaf), "-VAfile", str(responder), "-no_nonce"
    )
    assert by_responder.returncode == 0 and "Response verify OK" in by_responder.stderr
    assert f"{leaf}: good" in by_responder.stdout

    # Revoked with its reason, visible within a second of the revocation returning.
    server.cli("revoke", format(revoked_serial, "x"), "--reason", "keyCompromise")
    time.sleep(1.0)
    revoked = openssl_ocsp(
        server, "-issuer", str(issuer), "-cert", str(revoked_leaf), "-CAfile", str(bundle),
        "-no_nonce", "-respout", str(response_file),
    )  # fmt: skip
    assert revoked.returncode == 0 and "Response verify OK" in revoked.stderr, revoked.stderr
    assert f"{revoked_leaf}: revoked" in revoked.stdout
    assert "Reason: keyCompromise" in revoked.stdout
    assert_lints_clean_ocsp_response(response_file.read_bytes())

    # A serial this CA never issued.
    unknown = openssl_ocsp(
        server, "-issuer", str(issuer), "-serial", "0x1234567", "-CAfile", str(bundle)
    )
    assert unknown.returncode == 0 and "0x1234567: unknown" in unknown.stdout

    # curl GET with the RFC 5019 path, for good, revoked and unknown, with caching headers.
    for target, expected in (
        (("-cert", str(leaf)), ocsp.OCSPCertStatus.GOOD),
        (("-cert", str(revoked_leaf)), ocsp.OCSPCertStatus.REVOKED),
        (("-serial", "0x1234567"), ocsp.OCSPCertStatus.UNKNOWN),
    ):
        request = tmp_path / "request.der"
        made = run("openssl", "ocsp", "-issuer", str(issuer), *target, "-no_nonce",
                   "-reqout", str(request))  # fmt: skip
        assert made.returncode == 0, made.stderr
        path = urllib.parse.quote(base64.b64encode(request.read_bytes()).decode(), safe="")
        headers = tmp_path / "headers.txt"
        fetched = run(
            "curl", "-sS", "--fail", "--cacert", str(server.root_pem), "-D", str(headers),
            "-o", str(response_file), f"{server.base_url}/ocsp/{path}",
        )  # fmt: skip
        assert fetched.returncode == 0, fetched.stderr
        text = headers.read_text().lower()
        assert "content-type: application/ocsp-response" in text
        assert "public, no-transform, must-revalidate" in text and "etag:" in text
        der = response_file.read_bytes()
        assert_lints_clean_ocsp_response(der)
        assert ocsp.load_der_ocsp_response(der).certificate_status == expected
        checked = run(
            "openssl", "ocsp", "-respin", str(response_file), "-issuer", str(issuer), *target,
            "-CAfile", str(bundle), "-no_nonce",
        )  # fmt: skip
        assert "Response verify OK" in checked.stderr, checked.stderr

    # Bad input: OCSP errors with 4xx, never a 500.
    for body, status in ((b"garbage", 400), (b"\x30\x03\x02\x01\x00", 400)):
        code, _, answer = server.request(
            "POST", "/ocsp", body=body, headers={"Content-Type": "application/ocsp-request"}
        )
        assert code == status
        assert ocsp.load_der_ocsp_response(answer).response_status == (
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        )
    code, _, _ = server.request("GET", "/ocsp/not-base64-@@")
    assert code == 400
    assert "Traceback" not in server.log()


def test_export_writes_presigned_responses_for_static_serving(
    server: RunningServer, tmp_path: Path
):
    leaf, issuer, bundle, _ = issue(server, tmp_path, "static.example.test")
    out = tmp_path / "static"
    result = server.cli("ocsp", "export", str(out))
    assert "wrote" in result.stdout
    request = tmp_path / "request.der"
    assert run("openssl", "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-no_nonce",
               "-reqout", str(request)).returncode == 0  # fmt: skip
    name = base64.b64encode(request.read_bytes()).decode()
    exported = out.joinpath(*[p for p in name.split("/") if p])
    checked = run(
        "openssl", "ocsp", "-respin", str(exported), "-issuer", str(issuer), "-cert", str(leaf),
        "-CAfile", str(bundle), "-no_nonce",
    )  # fmt: skip
    assert "Response verify OK" in checked.stderr and f"{leaf}: good" in checked.stdout
    assert_lints_clean_ocsp_response(exported.read_bytes())
