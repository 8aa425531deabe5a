"""End to end through a real `privca serve`: CLI, admin API, openssl, pkilint, both databases."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.integration.server import RunningServer
from tests.support.pki_lint import assert_lints_clean_certificate

pytestmark = pytest.mark.integration


def openssl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def make_openssl_csr(
    directory: Path,
    name: str,
    *,
    key_args: tuple[str, ...] = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
    san: str | None = None,
) -> Path:
    csr = directory / f"{name}.csr"
    result = openssl(
        "req",
        "-new",
        *key_args,
        "-nodes",
        "-keyout",
        str(directory / f"{name}.key"),
        "-subj",
        f"/CN={name}",
        "-addext",
        f"subjectAltName={san or 'DNS:' + name}",
        "-out",
        str(csr),
    )
    assert result.returncode == 0, result.stderr
    return csr


def split_chain(chain_path: Path) -> tuple[Path, Path]:
    certificates = x509.load_pem_x509_certificates(chain_path.read_bytes())
    leaf, rest = chain_path.with_suffix(".leaf.pem"), chain_path.with_suffix(".untrusted.pem")
    leaf.write_bytes(certificates[0].public_bytes(Encoding.PEM))
    rest.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certificates[1:]))
    return leaf, rest


def test_cli_issue_verify_revoke_list_and_audit(server: RunningServer, tmp_path: Path):
    csr = make_openssl_csr(tmp_path, "web.example.test")
    chain = tmp_path / "chain.pem"
    server.cli("issue", "--csr", str(csr), "--profile", "tls-server", "--out", str(chain))
    leaf, _ = split_chain(chain)
    verified = openssl(
        "verify", "-CAfile", str(server.root_pem), "-untrusted", str(chain), str(leaf)
    )
    assert verified.returncode == 0 and ": OK" in verified.stdout, verified.stderr
    certificate = x509.load_pem_x509_certificate(leaf.read_bytes())
    assert_lints_clean_certificate(certificate.public_bytes(Encoding.DER))
    serial = format(certificate.serial_number, "x")

    listed = json.loads(server.cli("certs", "list", "--expiring-within", "100d", "--json").stdout)
    assert serial in {row["serial"] for row in listed}
    soon = json.loads(server.cli("certs", "list", "--expiring-within", "30d", "--json").stdout)
    assert serial not in {row["serial"] for row in soon}

    server.cli("revoke", serial, "--reason", "keyCompromise")
    again = server.cli("revoke", serial, "--reason", "keyCompromise", check=False)
    assert again.returncode == 1 and "already revoked" in again.stderr
    shown = json.loads(server.cli("certs", "show", serial).stdout)
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "keyCompromise")

    server.cli("audit", "checkpoint")
    verified_log = server.cli("audit", "verify")
    assert "audit log verified" in verified_log.stdout
    export = tmp_path / "audit.jsonl"
    server.cli("audit", "export", "--out", str(export))
    actions = [json.loads(line)["action"] for line in export.read_text().splitlines()]
    assert {
        "key_generated",
        "ca_certificate_created",
        "certificate_issued",
        "certificate_revoked",
    } <= set(actions)


def test_cli_refuses_bad_input_with_clear_errors(server: RunningServer, tmp_path: Path):
    garbage = tmp_path / "garbage.csr"
    garbage.write_text(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    )
    result = server.cli("issue", "--csr", str(garbage), "--profile", "tls-server", check=False)
    assert result.returncode == 1 and "not a valid PKCS#10" in result.stderr
    weak = make_openssl_csr(tmp_path, "weak.example.test", key_args=("-newkey", "rsa:1024"))
    result = server.cli("issue", "--csr", str(weak), "--profile", "tls-server", check=False)
    assert result.returncode == 1 and "2048" in result.stderr
    good = make_openssl_csr(tmp_path, "x.example.test")
    result = server.cli("issue", "--csr", str(good), "--profile", "nope", check=False)
    assert result.returncode == 1 and 'unknown profile "nope"' in result.stderr
    assert "Traceback" not in result.stderr


def test_ca_keys_are_sensitive_and_not_extractable_in_the_token(server: RunningServer, monkeypatch):
    import hsm
    from hsm.softhsm import softhsm_conf

    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(server.data_dir / "softhsm")))
    pin = (server.data_dir / "secrets" / "hsm-pin").read_text().strip()
    token = hsm.Token(hsm.find_module(), "privca", lambda: pin)
    try:
        for label in (
            "privca-ca-root",
            "privca-ca-issuing-ec",
            "privca-ca-issuing-rsa",
            "privca-audit",
        ):
            attributes = token.key_attributes(label)
            assert attributes["sensitive"] and not attributes["extractable"], label
            assert attributes["token"] and attributes["never_extractable"], label
    finally:
        token.close()


def test_admin_api_issue_list_revoke_with_scoped_tokens(server: RunningServer, tmp_path: Path):
    admin = server.admin_token("admin")
    reader = server.admin_token("read")
    csr = make_openssl_csr(tmp_path, "api.example.test").read_text()

    status, body = server.json(
        "POST", "/api/v1/certificates", {"csr": csr, "profile": "tls-server"}
    )
    assert status == 401 and body["error"] == "unauthorized"
    status, body = server.json(
        "POST", "/api/v1/certificates", {"csr": csr, "profile": "tls-server"}, token=reader
    )
    assert status == 403 and body["error"] == "forbidden"
    status, body = server.json(
        "POST", "/api/v1/certificates", {"csr": csr, "profile": "tls-server"}, token=admin + "x"
    )
    assert status == 401

    status, issued = server.json(
        "POST", "/api/v1/certificates", {"csr": csr, "profile": "tls-server"}, token=admin
    )
    assert status == 201, issued
    assert issued["chain"].count("BEGIN CERTIFICATE") == 3
    status, listing = server.json("GET", "/api/v1/certificates?limit=1000", token=reader)
    assert status == 200 and issued["serial"] in {c["serial"] for c in listing["certificates"]}

    status, revoked = server.json(
        "POST",
        f"/api/v1/certificates/{issued['serial']}/revoke",
        {"reason": "superseded"},
        token=admin,
    )
    assert status == 200 and revoked["reason"] == "superseded"
    status, body = server.json(
        "POST",
        f"/api/v1/certificates/{issued['serial']}/revoke",
        {"reason": "superseded"},
        token=admin,
    )
    assert status == 409 and body["error"] == "already_revoked"
    status, body = server.json("POST", "/api/v1/certificates/ffff/revoke", {}, token=admin)
    assert status == 404
    status, body = server.json(
        "POST", f"/api/v1/certificates/{issued['serial']}/revoke", {"reason": "bogus"}, token=admin
    )
    assert status == 400 and body["error"] == "bad_request"

    status, verify = server.json("POST", "/api/v1/audit/verify", {}, token=admin)
    assert status == 200 and verify["ok"], verify
    status, entries = server.json("GET", "/api/v1/audit?limit=5", token=reader)
    assert status == 200 and len(entries["entries"]) == 5


def test_admin_api_bad_input_gets_json_4xx_and_writes_nothing(
    server: RunningServer, tmp_path: Path
):
    admin = server.admin_token("admin")
    before = server.json("GET", "/api/v1/certificates?limit=1000", token=admin)[1]["certificates"]
    auth = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    cases = [
        (b"{not json", 400),
        (b"[]", 400),
        (json.dumps({"profile": "tls-server"}).encode(), 400),
        (json.dumps({"csr": "garbage", "profile": "tls-server"}).encode(), 400),
        (json.dumps({"csr": 5, "profile": "tls-server"}).encode(), 400),
        (
            json.dumps(
                {
                    "csr": make_openssl_csr(tmp_path, "p.example.test").read_text(),
                    "profile": "missing",
                }
            ).encode(),
            400,
        ),
    ]
    for body, expected in cases:
        status, _, raw = server.request("POST", "/api/v1/certificates", body=body, headers=auth)
        assert status == expected, (body[:40], status, raw[:200])
        assert json.loads(raw)["error"], raw
    # An oversized body is refused before it is read; curl reads the early 413 where a client
    # that insists on sending everything first may see the connection close instead.
    body_file = tmp_path / "big.json"
    body_file.write_bytes(b"x" * 200_000)
    result = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
            str(server.root_pem),
            "-H",
            f"Authorization: Bearer {admin}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            f"@{body_file}",
            f"{server.base_url}/api/v1/certificates",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    *response, code = result.stdout.rsplit("\n", 1)
    assert code == "413" and json.loads(response[0])["error"], result.stdout
    status, _, raw = server.request("GET", "/api/v1/nothing-here", headers=auth)
    assert status == 404 and json.loads(raw)["error"] == "not_found"
    status, headers, raw = server.request("DELETE", "/api/v1/certificates", headers=auth)
    # RFC 9110 §15.5.6: a 405 names the methods the resource supports.
    assert status == 405 and json.loads(raw)["error"] == "method_not_allowed"
    assert set(headers["Allow"].split(", ")) >= {"GET", "POST"}, headers
    after = server.json("GET", "/api/v1/certificates?limit=1000", token=admin)[1]["certificates"]
    assert after == before


def test_health_metrics_openapi_and_ca_certificates(server: RunningServer):
    status, _, body = server.request("GET", "/healthz")
    assert status == 200
    status, _, body = server.request("GET", "/readyz")
    assert status == 200 and json.loads(body)["checks"] == {"database": "ok", "token": "ok"}
    status, _, body = server.request("GET", "/api/v1/openapi.json")
    assert status == 200 and json.loads(body)["openapi"].startswith("3.")
    status, headers, body = server.request("GET", "/ca/issuing-ec.crt")
    assert status == 200 and headers["Content-Type"] == "application/pkix-cert"
    x509.load_der_x509_certificate(body)
    server.cli(
        "issue",
        "--csr",
        str(make_openssl_csr(server.data_dir.parent, "m.example.test")),
        "--profile",
        "tls-server",
        "--out",
        str(server.data_dir.parent / "m.pem"),
    )
    status, _, body = server.request("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'privca_certificates_by_expiry{bucket="lt_90d",issuer="issuing-ec"}' in text
    assert "privca_audit_unverified_entries" in text


def test_metrics_count_every_workers_issuances(server: RunningServer, tmp_path: Path):
    token = server.admin_token("issue")
    for i in range(6):
        csr = make_openssl_csr(tmp_path, f"w{i}.example.test").read_text()
        status, _ = server.json(
            "POST", "/api/v1/certificates", {"csr": csr, "profile": "tls-server"}, token=token
        )
        assert status == 201
    for _ in range(6):  # whichever worker answers, the counters are the sum over all workers
        status, _, body = server.request("GET", "/metrics", headers={"Connection": "close"})
        assert status == 200
        text = body.decode()
        assert 'privca_issuance_total{channel="admin",result="issued"} 6.0' in text, text[:3000]
        assert "privca_hsm_sign_duration_seconds_count" in text
    status, _, body = server.request("GET", "/readyz")
    assert status == 200


def test_worker_command_runs_due_jobs(server: RunningServer):
    result = server.cli("worker", "--once")
    assert result.stdout.startswith("ran ")


def test_every_admin_endpoint_refuses_bad_input_with_a_json_4xx(server: RunningServer):
    admin = server.admin_token("admin")
    auth = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    cases = [
        ("POST", "/api/v1/certificates", b'{"csr": "\\ud800", "profile": "tls-server"}', 400),
        (
            "POST",
            "/api/v1/certificates",
            json.dumps({"csr": "x", "profile": "tls-server", "owner": "o" * 300}).encode(),
            400,
        ),
        (
            "POST",
            "/api/v1/certificates",
            json.dumps({"csr": "x", "profile": "tls-server", "validity_days": 10**9}).encode(),
            400,
        ),
        ("GET", "/api/v1/audit?limit=-5", None, 400),
        ("GET", "/api/v1/audit?since=" + "9" * 23, None, 400),
        ("GET", "/api/v1/certificates?after=" + "9" * 23, None, 400),
        ("GET", "/api/v1/certificates?expiring_within=5x", None, 400),
        ("GET", "/api/v1/certificates?expiring_within=%205d", None, 400),
        ("GET", "/api/v1/certificates?status=valid", None, 400),
        ("GET", "/api/v1/certificates?limit=1_0", None, 400),
        ("GET", "/api/v1/certificates/%201", None, 400),
        ("GET", "/api/v1/certificates?owner=%00", None, 400),
        ("GET", "/api/v1/certificates/zz-not-hex", None, 400),
        ("POST", "/api/v1/tokens", json.dumps({"name": "x", "scopes": [1, 2]}).encode(), 400),
        (
            "POST",
            "/api/v1/tokens",
            json.dumps({"name": "n\u0000x", "scopes": "read"}).encode(),
            400,
        ),
        ("DELETE", "/api/v1/tokens/" + "9" * 23, None, 404),
        # Within the 64-bit range the API once passed on, beyond the 32-bit id column: not a 500.
        ("DELETE", f"/api/v1/tokens/{2**62 - 1}", None, 404),
        ("POST", "/api/v1/certificates/abc/revoke", b'{"reason": "01"}', 400),
        ("POST", "/api/v1/certificates/abc/revoke", b'{"reason": 7}', 400),
        ("POST", "/api/v1/certificates/abc/revoke", b'{"invalidity_date": "yesterday"}', 400),
    ]
    for method, path, body, expected in cases:
        status, _, raw = server.request(method, path, body=body, headers=auth)
        assert status == expected, (method, path, status, raw[:300])
        assert json.loads(raw)["error"], raw
    # A duration filter beyond a century is everything still valid, not an error; zero is none.
    issued = server.json("GET", "/api/v1/certificates?status=issued&limit=1000", token=admin)[1]
    status, everything = server.json(
        "GET", "/api/v1/certificates?expiring_within=99999999999d&limit=1000", token=admin
    )
    assert status == 200 and everything["certificates"] == issued["certificates"]
    status, nothing = server.json("GET", "/api/v1/certificates?expiring_within=0", token=admin)
    assert status == 200 and nothing["certificates"] == []
    assert "Traceback" not in server.log()


def test_cli_refuses_out_of_range_numbers_without_a_traceback(server: RunningServer, tmp_path):
    csr = make_openssl_csr(tmp_path, "n.example.test")
    for args in (
        ("issue", "--csr", str(csr), "--profile", "tls-server", "--validity-days", "99999999999"),
        ("certs", "list", "--expiring-within", "99999999999d"),
        ("audit", "export", "--since", "9" * 23),
        ("token", "revoke", "9" * 23),
    ):
        result = server.cli(*args, check=False)
        assert result.returncode in (1, 2), args
        assert "Traceback" not in result.stderr, result.stderr
