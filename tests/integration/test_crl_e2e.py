"""CRLs end to end through a real `privca serve`: openssl crl verifies every CRL, openssl verify
-crl_check rejects a revoked certificate and accepts a good one, deltas and shards are served."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.integration.server import RunningServer, start_server
from tests.integration.test_ocsp_e2e import issue
from tests.support.pki_lint import assert_lints_clean_crl

pytestmark = pytest.mark.integration

WAIT = 30.0  # bounded wait for the debounced regeneration job


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def fetch_crl(
    server: RunningServer, path: str, directory: Path, cas: Path
) -> x509.CertificateRevocationList:
    status, headers, body = server.request("GET", path)
    assert status == 200, (path, status, body[:200])
    assert headers["Content-Type"] == "application/pkix-crl"
    assert "must-revalidate" in headers["Cache-Control"] and headers["ETag"]
    assert_lints_clean_crl(body)
    der = directory / (path.strip("/").replace("/", "_"))
    der.write_bytes(body)
    verified = run(
        "openssl", "crl", "-inform", "DER", "-in", str(der), "-CAfile", str(cas), "-noout"
    )
    assert verified.returncode == 0 and "verify OK" in verified.stderr, verified.stderr
    return x509.load_der_x509_crl(body)


def wait_for_serial(server, path, directory, cas, serial) -> x509.CertificateRevocationList:
    deadline = time.monotonic() + WAIT
    while True:
        parsed = fetch_crl(server, path, directory, cas)
        if parsed.get_revoked_certificate_by_serial_number(serial) is not None:
            return parsed
        assert time.monotonic() < deadline, f"serial not on {path} after {WAIT} s"
        time.sleep(0.5)


def test_crls_verify_and_crl_check_rejects_revoked(server: RunningServer, tmp_path: Path):
    good, _issuer, bundle, _ = issue(server, tmp_path, "good.example.test")
    bad, _, _, bad_serial = issue(server, tmp_path, "bad.example.test")
    # Every issuer's CRL verifies against its certificate (served at the AIA caIssuers URL).
    for name in ("root", "issuing-ec", "issuing-rsa"):
        status, _, der = server.request("GET", f"/ca/{name}.crt")
        assert status == 200
        anchors = tmp_path / f"{name}-anchors.pem"
        anchors.write_bytes(
            x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
            + server.root_pem.read_bytes()
        )
        fetch_crl(server, f"/crl/{name}.crl", tmp_path, anchors)

    server.cli("revoke", format(bad_serial, "x"), "--reason", "superseded")
    parsed = wait_for_serial(server, "/crl/issuing-ec.crl", tmp_path, bundle, bad_serial)
    entry = parsed.get_revoked_certificate_by_serial_number(bad_serial)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.superseded

    crls = tmp_path / "crls.pem"
    crls.write_bytes(
        parsed.public_bytes(Encoding.PEM)
        + fetch_crl(server, "/crl/root.crl", tmp_path, bundle).public_bytes(Encoding.PEM)
    )
    rejected = run("openssl", "verify", "-crl_check_all", "-CAfile", str(bundle),
                   "-CRLfile", str(crls), str(bad))  # fmt: skip
    assert rejected.returncode != 0 and "certificate revoked" in rejected.stdout + rejected.stderr
    accepted = run("openssl", "verify", "-crl_check_all", "-CAfile", str(bundle),
                   "-CRLfile", str(crls), str(good))  # fmt: skip
    assert accepted.returncode == 0 and ": OK" in accepted.stdout, accepted.stderr

    status, _, _ = server.request("GET", "/crl/nope.crl")
    assert status == 404
    status, _, _ = server.request("GET", "/crl/issuing-ec/shard/1.crl")
    assert status == 404


def test_delta_and_shard_crls_are_served(tmp_path: Path, database_url: str):
    server = start_server(tmp_path, database_url, extra="[crl]\nshards = 2\ndelta = true\n")
    try:
        _, _, bundle, serial = issue(server, tmp_path, "shard.example.test")
        whole = fetch_crl(server, "/crl/issuing-ec.crl", tmp_path, bundle)
        freshest = whole.extensions.get_extension_for_class(x509.FreshestCRL).value
        assert freshest[0].full_name[0].value.endswith("/crl/issuing-ec/delta.crl")
        shard = 1 + serial % 2
        for path in (f"/crl/issuing-ec/shard/{shard}.crl", "/crl/issuing-ec/delta.crl"):
            fetch_crl(server, path, tmp_path, bundle)
        server.cli("revoke", format(serial, "x"), "--reason", "keyCompromise")
        delta = wait_for_serial(server, "/crl/issuing-ec/delta.crl", tmp_path, bundle, serial)
        assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).critical
        shard_delta = wait_for_serial(
            server, f"/crl/issuing-ec/shard/{shard}/delta.crl", tmp_path, bundle, serial
        )
        idp = shard_delta.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.value.full_name[0].value.endswith(f"/crl/issuing-ec/shard/{shard}.crl")
        status, _, _ = server.request("GET", "/crl/issuing-ec/shard/3.crl")
        assert status == 404
    finally:
        server.stop()
