"""ACME protocol checks with raw JWS against the real app on a real database (both engines).

The app runs in-process (Flask test client) over a bootstrapped core with software CA keys;
challenges are validated by the real job handler against listeners on loopback. One shared
battery of bad inputs runs against every POST endpoint and asserts the problem type, the status,
a fresh Replay-Nonce, and that no row changed (spent nonces aside).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, text

from acme_server.orders import refresh_orders
from acme_server.storage import AuthorizationRow, OrderAuthorizationRow, OrderRow
from ca.jobs import JobRunner
from ca.storage.models import JobRow
from ca.web.app import create_app
from tests.conftest import module_database
from tests.integration.server import free_port
from tests.support.core_factory import make_core
from tests.support.pki_lint import assert_lints_clean_certificate
from tests.support.software_keystore import SoftwareKeyStore

pytestmark = pytest.mark.integration

BASE = "http://pki.test"
ERR = "urn:ietf:params:acme:error:"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


# --- a raw ACME client -------------------------------------------------------------------------


class Key:
    """An account or certificate key that signs JWS (ES256, RS256 or EdDSA)."""

    def __init__(self, kind: str = "ec") -> None:
        if kind == "ec":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
        elif kind == "rsa":
            self.private = rsa.generate_private_key(65537, 2048)
            self.alg = "RS256"
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.alg = "EdDSA"

    @property
    def jwk(self) -> dict[str, str]:
        public = self.private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            numbers = public.public_numbers()
            return {
                "kty": "EC",
                "crv": "P-256",
                "x": b64(numbers.x.to_bytes(32, "big")),
                "y": b64(numbers.y.to_bytes(32, "big")),
            }
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return {
                "kty": "RSA",
                "e": b64(numbers.e.to_bytes(3, "big")),
                "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            }
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}

    @property
    def thumbprint(self) -> str:
        jwk = self.jwk
        members = {k: jwk[k] for k in sorted(jwk) if k in ("crv", "e", "kty", "n", "x", "y")}
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
        return b64(hashlib.sha256(canonical.encode()).digest())

    def sign(self, data: bytes) -> bytes:
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if self.alg == "RS256":
            from cryptography.hazmat.primitives.asymmetric import padding

            return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.private.sign(data)


class RawClient:
    """Builds and posts JWS by hand, so tests can break any part of it."""

    def __init__(self, http: Any, directory: str = "/acme") -> None:
        self.http = http
        self.prefix = directory

    def url(self, path: str) -> str:
        return BASE + path

    def nonce(self) -> str:
        response = self.http.head(f"{self.prefix}/new-nonce", base_url=BASE)
        return response.headers["Replay-Nonce"]

    def jws(
        self,
        key: Key,
        url: str,
        payload: Any,
        *,
        kid: str | None = None,
        nonce: str | None = None,
        protected: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": key.alg, "nonce": nonce or self.nonce(), "url": url}
        if kid:
            header["kid"] = kid
        else:
            header["jwk"] = key.jwk
        header.update(protected or {})
        header = {k: v for k, v in header.items() if v is not None}
        protected_b64 = b64json(header)
        payload_b64 = "" if payload is None else b64json(payload)
        signature = key.sign(f"{protected_b64}.{payload_b64}".encode())
        return {"protected": protected_b64, "payload": payload_b64, "signature": b64(signature)}

    def post_raw(self, path: str, body: bytes, content_type: str = "application/jose+json") -> Any:
        return self.http.post(path, data=body, content_type=content_type, base_url=BASE)

    def post(self, key: Key, path: str, payload: Any, *, kid: str | None = None, **kw: Any) -> Any:
        document = self.jws(key, self.url(path), payload, kid=kid, **kw)
        return self.post_raw(path, json.dumps(document).encode())


@dataclass
class Account:
    key: Key
    url: str

    @property
    def path(self) -> str:
        return self.url[len(BASE) :]


def path_of(url: str) -> str:
    assert url.startswith(BASE), url
    return url[len(BASE) :]


class ChallengeResponder(http.server.ThreadingHTTPServer):
    """An http-01 responder on loopback: token -> key authorization."""

    def __init__(self, port: int) -> None:
        self.answers: dict[str, str] = {}

        answers = self.answers

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.path.rsplit("/", 1)[-1]
                body = answers.get(token, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@dataclass
class World:
    core: Any
    app: Any
    client: RawClient
    database_url: str
    responder: ChallengeResponder
    http_port: int
    accounts: dict[str, Account] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    certificate_der: bytes = b""
    certificate_key: Key | None = None

    def run_jobs(self) -> int:
        return JobRunner(self.core, self.core.job_handlers).run_until_idle(max_jobs=100)

    def new_account(self, key: Key | None = None, **payload: Any) -> Account:
        key = key or Key()
        body = {"termsOfServiceAgreed": True, **payload}
        response = self.client.post(key, "/acme/new-account", body)
        assert response.status_code in (200, 201), response.get_data(as_text=True)
        return Account(key, response.headers["Location"])

    def order(self, account: Account, identifiers: list[dict[str, str]], **extra: Any) -> Any:
        return self.client.post(
            account.key,
            "/acme/new-order",
            {"identifiers": identifiers, **extra},
            kid=account.url,
        )

    def get(self, account: Account, url: str) -> Any:
        return self.client.post(account.key, path_of(url), None, kid=account.url)

    def validate_http01(self, account: Account, authz_url: str) -> dict[str, Any]:
        authz = self.get(account, authz_url).get_json()
        challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
        self.responder.answers[challenge["token"]] = (
            f"{challenge['token']}.{account.key.thumbprint}"
        )
        response = self.client.post(account.key, path_of(challenge["url"]), {}, kid=account.url)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["status"] == "processing"
        self.run_jobs()
        return self.get(account, authz_url).get_json()

    def issue(
        self, account: Account, names: list[str], kind: str = "ip"
    ) -> tuple[dict[str, Any], str, bytes, Key]:
        identifiers = [{"type": kind, "value": n} for n in names]
        response = self.order(account, identifiers)
        assert response.status_code == 201, response.get_data(as_text=True)
        order_url = response.headers["Location"]
        for authz_url in response.get_json()["authorizations"]:
            if self.get(account, authz_url).get_json()["status"] == "pending":
                assert self.validate_http01(account, authz_url)["status"] == "valid"
        order = self.get(account, order_url).get_json()
        assert order["status"] == "ready"
        certificate_key = Key()
        csr = csr_for(certificate_key, identifiers)
        response = self.client.post(
            account.key, path_of(order["finalize"]), {"csr": b64(csr)}, kid=account.url
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        order = response.get_json()
        assert order["status"] == "valid"
        pem = self.get(account, order["certificate"])
        assert pem.status_code == 200
        assert pem.mimetype == "application/pem-certificate-chain"
        chain = x509.load_pem_x509_certificates(pem.get_data())
        der = chain[0].public_bytes(serialization.Encoding.DER)
        assert_lints_clean_certificate(der)
        return order, order_url, der, certificate_key

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table except spent nonces (a refused request may spend one)."""
        database = self.core.database
        names = [n for n in inspect(database.engine).get_table_names() if n != "acme_used_nonces"]
        with database.engine.connect() as connection:
            return {
                name: sorted(
                    (
                        tuple(map(repr, row))
                        for row in connection.execute(text(f'SELECT * FROM "{name}"'))
                    ),
                )
                for name in names
            }


def csr_for(key: Key, identifiers: list[dict[str, str]]) -> bytes:
    import ipaddress

    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(i["value"]))
        if i["type"] == "ip"
        else x509.DNSName(i["value"])
        for i in identifiers
    ]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key.private, hashes.SHA256() if key.alg != "EdDSA" else None).public_bytes(
        serialization.Encoding.DER
    )


ACME_EXTRA = """
[frontends.acme]
orders_page_size = 2
[frontends.acme.validation]
http_port = {http_port}
tls_alpn_port = {alpn_port}
immediate = false
denied_networks = []
attempts = 1
timeout = 3
[frontends.acme.directories.eab]
eab_required = true
# Many tests (the fuzzed newAccount payloads most of all) make accounts from 127.0.0.1; the limit
# itself is tested with a core of its own (test_rate_limits_answer_rate_limited_with_retry_after).
[frontends.acme.rate_limits]
new_accounts_per_ip = false
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp(f"acme-protocol-{request.param}")
    with module_database(request, root) as url:
        http_port = free_port()
        responder = ChallengeResponder(http_port)
        core = make_core(
            root,
            url,
            SoftwareKeyStore(),
            extra=ACME_EXTRA.format(http_port=http_port, alpn_port=free_port()),
        )
        app = create_app(core=core)
        world = World(core, app, RawClient(app.test_client()), url, responder, http_port)
        try:
            _populate(world)
            yield world
        finally:
            responder.shutdown()
            responder.server_close()
            core.close()


def _populate(world: World) -> None:
    """Account "a" with a valid order and certificate, "b" another account, "c" deactivated."""
    a = world.accounts["a"] = world.new_account(contact=["mailto:a@example.com"])
    world.accounts["b"] = world.new_account(Key("rsa"))
    c = world.accounts["c"] = world.new_account(Key("ed25519"))
    response = world.client.post(c.key, c.path, {"status": "deactivated"}, kid=c.url)
    assert response.status_code == 200 and response.get_json()["status"] == "deactivated"
    order, order_url, der, certificate_key = world.issue(a, ["127.0.0.1"])
    world.certificate_der, world.certificate_key = der, certificate_key
    order_body = world.get(a, order_url).get_json()
    authz_url = order_body["authorizations"][0]
    authz = world.get(a, authz_url).get_json()
    world.resources.update(
        order=order_url,
        finalize=order["finalize"],
        certificate=order["certificate"],
        authz=authz_url,
        challenge=authz["challenges"][0]["url"],
    )
    # A pending order, so challenge and authorization endpoints have something to act on.
    pending = world.order(a, [{"type": "ip", "value": "127.0.0.2"}])
    assert pending.status_code == 201
    pending_authz = pending.get_json()["authorizations"][0]
    world.resources["pending_order"] = pending.headers["Location"]
    world.resources["pending_authz"] = pending_authz
    world.resources["pending_challenge"] = world.get(a, pending_authz).get_json()["challenges"][0][
        "url"
    ]


# --- the shared battery of bad inputs ----------------------------------------------------------

# endpoint -> (path or resource key, a well-formed payload for account "a", signed with kid?)
ENDPOINTS: dict[str, tuple[str, Any, bool]] = {
    "newAccount": ("/acme/new-account", {"termsOfServiceAgreed": True}, False),
    "newOrder": ("/acme/new-order", {"identifiers": [{"type": "ip", "value": "127.0.0.9"}]}, True),
    "account": ("@account", {}, True),
    "orders": ("@orders", None, True),
    "order": ("order", None, True),
    "finalize": ("pending_order@finalize", {"csr": ""}, True),
    "authorization": ("pending_authz", None, True),
    "challenge": ("pending_challenge", {}, True),
    "certificate": ("certificate", None, True),
    "revokeCert": ("/acme/revoke-cert", {"certificate": "", "reason": 0}, True),
    "keyChange": ("/acme/key-change", {}, True),
}


def endpoint_path(world: World, endpoint: str) -> str:
    where = ENDPOINTS[endpoint][0]
    if where.startswith("/"):
        return where
    if where == "@account":
        return world.accounts["a"].path
    if where == "@orders":
        return world.accounts["a"].path + "/orders"
    if where.endswith("@finalize"):
        return path_of(world.resources[where.split("@")[0]]) + "/finalize"
    return path_of(world.resources[where])


def assert_problem(response: Any, kind: str, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["type"] == ERR + kind, body
    assert body["status"] == status
    assert response.headers.get("Replay-Nonce")
    assert response.headers.get("Cache-Control") == "no-store"
    return body


def signed_document(world: World, endpoint: str, **kw: Any) -> tuple[str, dict[str, Any]]:
    path = endpoint_path(world, endpoint)
    _, payload, uses_kid = ENDPOINTS[endpoint]
    a = world.accounts["a"]
    kid = kw.pop("kid", a.url if uses_kid else None)
    key = kw.pop("key", a.key if uses_kid else Key())
    url = kw.pop("url", BASE + path)
    return path, world.client.jws(key, url, payload, kid=kid, **kw)


def _bad_request(world: World, endpoint: str, case: str) -> Any:
    client = world.client
    if case == "unknown_nonce":
        path, document = signed_document(world, endpoint, nonce=b64(b"\x01" * 40))
    elif case == "reused_nonce":
        nonce = client.nonce()
        a = world.accounts["a"]
        first = client.post(a.key, a.path, None, kid=a.url, nonce=nonce)
        assert first.status_code == 200
        path, document = signed_document(world, endpoint, nonce=nonce)
    elif case == "wrong_url":
        path, document = signed_document(world, endpoint, url=BASE + "/acme/somewhere-else")
    elif case == "jwk_and_kid":
        a = world.accounts["a"]
        path, document = signed_document(
            world, endpoint, kid=a.url, key=a.key, protected={"jwk": a.key.jwk}
        )
    elif case == "unprotected_header":
        path, document = signed_document(world, endpoint)
        document["header"] = {"alg": "ES256"}
    elif case in ("alg_none", "alg_hs256"):
        path, document = signed_document(world, endpoint)
        header = json.loads(base64.urlsafe_b64decode(document["protected"] + "=="))
        header["alg"] = "none" if case == "alg_none" else "HS256"
        document["protected"] = b64json(header)
        document["signature"] = "" if case == "alg_none" else b64(b"\0" * 32)
    elif case == "wrong_content_type":
        path, document = signed_document(world, endpoint)
        return client.post_raw(path, json.dumps(document).encode(), "application/json")
    elif case == "oversized":
        path, document = signed_document(world, endpoint)
        document["payload"] = "A" * 70000
        return client.post_raw(path, json.dumps(document).encode())
    elif case == "bad_signature":
        path, document = signed_document(world, endpoint)
        document["signature"] = b64(b"\x02" * 64)
    elif case == "deactivated_account":
        c = world.accounts["c"]
        path, document = signed_document(world, endpoint, kid=c.url, key=c.key)
    elif case == "other_account":
        b = world.accounts["b"]
        path, document = signed_document(world, endpoint, kid=b.url, key=b.key)
    else:
        raise AssertionError(case)
    return client.post_raw(path, json.dumps(document).encode())


EXPECTED = {
    "unknown_nonce": ("badNonce", 400),
    "reused_nonce": ("badNonce", 400),
    "wrong_url": ("unauthorized", 403),
    "jwk_and_kid": ("malformed", 400),
    "unprotected_header": ("malformed", 400),
    "alg_none": ("badSignatureAlgorithm", 400),
    "alg_hs256": ("badSignatureAlgorithm", 400),
    "wrong_content_type": ("malformed", 415),
    "oversized": ("malformed", 413),
    "bad_signature": ("malformed", 400),
    "deactivated_account": ("unauthorized", 403),
    "other_account": ("unauthorized", 403),
}
# "Another account" only means something for resources that belong to one.
OWNED = {"account", "orders", "order", "finalize", "authorization", "challenge", "certificate"}


@pytest.mark.parametrize("case", list(EXPECTED))
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_every_post_endpoint_refuses_bad_input_without_writing(
    world: World, endpoint: str, case: str
):
    uses_kid = ENDPOINTS[endpoint][2]
    if case in ("deactivated_account", "other_account") and not uses_kid:
        pytest.skip("newAccount is signed with a bare key, not an account")
    if case == "other_account" and endpoint not in OWNED:
        pytest.skip("not a resource of one account")
    before = world.snapshot()
    response = _bad_request(world, endpoint, case)
    kind, status = EXPECTED[case]
    assert_problem(response, kind, status)
    assert world.snapshot() == before


# --- resources, headers, routing errors ---------------------------------------------------------


# --- fuzzed payloads and headers -----------------------------------------------------------------
# 40 cases per endpoint, the same on every run; PRIVCA_FUZZ_EXAMPLES=N draws N fresh ones (600
# per endpoint on both engines found nothing when these tests were written).

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Field names each endpoint reads, so the fuzzer reaches the code behind the JSON parsing.
FIELDS = st.sampled_from(
    "identifiers type value notBefore notAfter profile replaces csr certificate reason contact "
    "termsOfServiceAgreed status onlyReturnExisting externalAccountBinding account oldKey "
    "protected payload signature".split()
)
PAYLOADS = (
    JSON_VALUES
    | st.dictionaries(FIELDS, JSON_VALUES, max_size=5)
    | st.fixed_dictionaries(
        {"identifiers": st.lists(st.dictionaries(FIELDS, JSON_VALUES, max_size=3), max_size=3)}
    )
)
HEADER_FIELDS = st.dictionaries(
    st.sampled_from(["alg", "nonce", "url", "kid", "jwk", "b64", "crit", "typ"]),
    JSON_VALUES,
    min_size=1,
    max_size=3,
)
FUZZ = settings(
    max_examples=int(os.environ.get("PRIVCA_FUZZ_EXAMPLES", "40")),
    deadline=None,
    # The same cases on every run: CI must not pass or fail by luck.
    derandomize="PRIVCA_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_refused_or_served(response: Any) -> None:
    """Anything but a 5xx: a success, or a problem document with a 4xx status."""
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json", response.get_data(as_text=True)
        assert response.get_json()["type"].startswith(ERR)
    assert response.headers.get("Replay-Nonce")


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_fuzzed_payloads_get_a_problem_document_never_a_server_error(world: World, endpoint: str):
    a = world.accounts["a"]
    path = endpoint_path(world, endpoint)
    uses_kid = ENDPOINTS[endpoint][2]

    @FUZZ
    @given(payload=PAYLOADS)
    def post(payload: Any) -> None:
        if endpoint == "account" and isinstance(payload, dict) and "status" in payload:
            payload = {**payload, "status": "valid"}  # account "a" must stay usable
        key = a.key if uses_kid else Key()
        response = world.client.post(key, path, payload, kid=a.url if uses_kid else None)
        assert_refused_or_served(response)

    post()


@pytest.mark.parametrize("endpoint", ["newAccount", "newOrder", "authorization", "revokeCert"])
def test_fuzzed_protected_headers_get_a_problem_document(world: World, endpoint: str):
    a = world.accounts["a"]

    @FUZZ
    @given(header=HEADER_FIELDS)
    def post(header: dict[str, Any]) -> None:
        path, document = signed_document(world, endpoint, protected=header)
        assert_refused_or_served(world.client.post_raw(path, json.dumps(document).encode()))
        # The same header over a signature that verifies no longer matters: structure first.
        raw = json.dumps({**document, "protected": b64json(header)}).encode()
        assert_refused_or_served(world.client.post_raw(path, raw))

    assert a.url
    post()


def test_directory_lists_resources_profiles_and_eab_requirement(world: World):
    http = world.client.http
    response = http.get("/acme/directory", base_url=BASE)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["newOrder"] == BASE + "/acme/new-order"
    assert body["renewalInfo"] == BASE + "/acme/renewal-info"
    assert set(body["meta"]["profiles"]) == set(world.core.profiles)
    assert body["meta"]["externalAccountRequired"] is False
    eab = http.get("/acme/eab/directory", base_url=BASE).get_json()
    assert eab["newAccount"] == BASE + "/acme/eab/new-account"
    assert eab["meta"]["externalAccountRequired"] is True


def test_new_nonce_answers_head_and_get_with_a_fresh_nonce(world: World):
    http = world.client.http
    head = http.head("/acme/new-nonce", base_url=BASE)
    get = http.get("/acme/new-nonce", base_url=BASE)
    assert (head.status_code, get.status_code) == (200, 204)
    assert head.headers["Replay-Nonce"] != get.headers["Replay-Nonce"]
    assert get.headers["Cache-Control"] == "no-store"
    assert 'rel="index"' in get.headers["Link"]


def test_routing_errors_under_acme_are_problem_documents(world: World):
    http = world.client.http
    missing = http.post("/acme/no-such-thing", base_url=BASE)
    assert_problem(missing, "malformed", 404)
    not_allowed = http.get(path_of(world.resources["order"]), base_url=BASE)
    assert_problem(not_allowed, "malformed", 405)
    assert "POST" in not_allowed.headers["Allow"]  # RFC 9110 §15.5.6
    unknown = world.get(world.accounts["a"], BASE + "/acme/order/doesnotexist")
    assert_problem(unknown, "malformed", 404)


def test_orders_list_is_paginated_with_link_next(world: World):
    a = world.accounts["a"]
    world.order(a, [{"type": "ip", "value": "127.0.0.3"}])
    first = world.client.post(a.key, a.path + "/orders", None, kid=a.url)
    assert first.status_code == 200
    assert len(first.get_json()["orders"]) == 2
    link = first.headers["Link"]
    assert 'rel="next"' in link
    next_url = link.split("<", 1)[1].split(">", 1)[0]
    second = world.client.post(a.key, path_of(next_url), None, kid=a.url)
    assert second.status_code == 200 and second.get_json()["orders"]
    assert not set(second.get_json()["orders"]) & set(first.get_json()["orders"])


def test_new_account_with_only_return_existing(world: World):
    missing = world.client.post(Key(), "/acme/new-account", {"onlyReturnExisting": True})
    assert_problem(missing, "accountDoesNotExist", 400)
    a = world.accounts["a"]
    found = world.client.post(a.key, "/acme/new-account", {"onlyReturnExisting": True})
    assert found.status_code == 200 and found.headers["Location"] == a.url


@pytest.mark.parametrize(
    ("contact", "kind"),
    [
        (["tel:+15551234"], "unsupportedContact"),
        (["mailto:not an address"], "invalidContact"),
        (["mailto:a@example.com?subject=x"], "invalidContact"),
        ("mailto:a@example.com", "malformed"),
    ],
)
def test_account_contacts_are_validated_without_writing(world: World, contact: Any, kind: str):
    a = world.accounts["a"]
    before = world.snapshot()
    response = world.client.post(a.key, a.path, {"contact": contact}, kid=a.url)
    assert_problem(response, kind, 400)
    assert world.snapshot() == before


# --- orders, challenges, finalize ---------------------------------------------------------------


def test_valid_authorizations_are_reused_for_a_new_order(world: World):
    a = world.accounts["a"]
    response = world.order(a, [{"type": "ip", "value": "127.0.0.1"}])
    assert response.status_code == 201
    assert response.get_json()["status"] == "ready"
    assert response.get_json()["authorizations"] == [world.resources["authz"]]


def test_ip_identifiers_offer_http01_and_tls_alpn01_and_wildcards_only_dns01(world: World):
    b = world.accounts["b"]
    ip_order = world.order(b, [{"type": "ip", "value": "::1"}]).get_json()
    ip_authz = world.get(b, ip_order["authorizations"][0]).get_json()
    assert ip_authz["identifier"] == {"type": "ip", "value": "::1"}
    assert {c["type"] for c in ip_authz["challenges"]} == {"http-01", "tls-alpn-01"}
    wildcard = world.order(b, [{"type": "dns", "value": "*.wild.test"}])
    assert wildcard.status_code == 201, wildcard.get_data(as_text=True)
    authz = world.get(b, wildcard.get_json()["authorizations"][0]).get_json()
    assert authz["wildcard"] is True and authz["identifier"]["value"] == "wild.test"
    assert [c["type"] for c in authz["challenges"]] == ["dns-01"]


def test_new_order_refuses_unknown_profile_and_identifiers_the_policy_denies(world: World):
    b = world.accounts["b"]
    before = world.snapshot()
    unknown = world.order(b, [{"type": "ip", "value": "127.0.0.1"}], profile="nope")
    assert_problem(unknown, "invalidProfile", 400)
    denied = world.order(
        b,
        [{"type": "ip", "value": "127.0.0.1"}, {"type": "dns", "value": "bad_name.test"}],
        profile="tls-client",
    )
    body = assert_problem(denied, "rejectedIdentifier", 400)
    assert {s["identifier"]["value"] for s in body["subproblems"]} == {
        "127.0.0.1",
        "bad_name.test",
    }
    assert all(s["type"] == ERR + "rejectedIdentifier" for s in body["subproblems"])
    unsupported = world.order(b, [{"type": "email", "value": "x@example.com"}])
    assert_problem(unsupported, "unsupportedIdentifier", 400)
    assert world.snapshot() == before


def test_finalize_before_ready_is_order_not_ready(world: World):
    a = world.accounts["a"]
    finalize = path_of(world.resources["pending_order"]) + "/finalize"
    csr = csr_for(Key(), [{"type": "ip", "value": "127.0.0.2"}])
    before = world.snapshot()
    response = world.client.post(a.key, finalize, {"csr": b64(csr)}, kid=a.url)
    assert_problem(response, "orderNotReady", 403)
    assert world.snapshot() == before


def test_finalize_refuses_a_csr_for_other_names_or_with_the_account_key(world: World):
    a = world.accounts["a"]
    response = world.order(a, [{"type": "ip", "value": "127.0.0.1"}])
    finalize = path_of(response.get_json()["finalize"])
    before = world.snapshot()
    other = csr_for(Key(), [{"type": "ip", "value": "127.0.0.5"}])
    assert_problem(
        world.client.post(a.key, finalize, {"csr": b64(other)}, kid=a.url), "badCSR", 400
    )
    own = csr_for(a.key, [{"type": "ip", "value": "127.0.0.1"}])
    assert_problem(world.client.post(a.key, finalize, {"csr": b64(own)}, kid=a.url), "badCSR", 400)
    garbage = world.client.post(a.key, finalize, {"csr": b64(b"not a csr")}, kid=a.url)
    assert_problem(garbage, "badCSR", 400)
    assert world.snapshot() == before


def test_failed_http01_makes_challenge_authorization_and_order_invalid(world: World):
    b = world.accounts["b"]
    response = world.order(b, [{"type": "ip", "value": "127.0.0.1"}])
    order_url = response.headers["Location"]
    authz_url = response.get_json()["authorizations"][0]
    authz = world.get(b, authz_url).get_json()
    challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
    world.responder.answers[challenge["token"]] = "wrong"
    world.client.post(b.key, path_of(challenge["url"]), {}, kid=b.url)
    world.run_jobs()
    authz = world.get(b, authz_url).get_json()
    assert authz["status"] == "invalid"
    failed = next(c for c in authz["challenges"] if c["type"] == "http-01")
    assert failed["status"] == "invalid"
    assert failed["error"]["type"] == ERR + "incorrectResponse"
    order = world.get(b, order_url).get_json()
    assert order["status"] == "invalid" and order["error"]["type"].startswith(ERR)


def test_one_challenge_of_an_authorization_is_validated_at_a_time(world: World):
    account = world.new_account()
    response = world.order(account, [{"type": "ip", "value": "127.0.0.1"}])
    authz_url = response.get_json()["authorizations"][0]
    challenges = {c["type"]: c for c in world.get(account, authz_url).get_json()["challenges"]}
    http01, alpn = challenges["http-01"], challenges["tls-alpn-01"]
    world.responder.answers[http01["token"]] = f"{http01['token']}.{account.key.thumbprint}"
    first = world.client.post(account.key, path_of(http01["url"]), {}, kid=account.url)
    assert first.status_code == 200 and first.get_json()["status"] == "processing"
    before = world.snapshot()
    other = world.client.post(account.key, path_of(alpn["url"]), {}, kid=account.url)
    assert_problem(other, "malformed", 400)
    # Answering the processing challenge again changes nothing (and queues no second job).
    again = world.client.post(account.key, path_of(http01["url"]), {}, kid=account.url)
    assert again.status_code == 200 and again.get_json()["status"] == "processing"
    assert world.snapshot() == before
    world.run_jobs()
    authz = world.get(account, authz_url).get_json()
    assert authz["status"] == "valid"
    assert [c["type"] for c in authz["challenges"]] == ["http-01"]


def test_validation_jobs_finish_in_the_transaction_that_records_their_outcome(world: World):
    a = world.accounts["a"]
    response = world.order(a, [{"type": "ip", "value": "127.0.0.1"}])
    authz_url = response.get_json()["authorizations"][0]
    authz = world.get(a, authz_url).get_json()
    if authz["status"] == "pending":
        assert world.validate_http01(a, authz_url)["status"] == "valid"
    with world.core.database.read() as session:
        rows = session.scalars(select(JobRow).where(JobRow.kind == "acme_validate")).all()
    assert rows
    # Every validation so far (passed or failed) is done, with its lease released, after one
    # attempt: the handler completed it together with the challenge's outcome.
    assert {(r.status, r.locked_by, r.attempts) for r in rows} == {("done", None, 1)}


def test_two_authorizations_validated_side_by_side_make_their_order_ready(world: World):
    """Each validation reads the order's other authorizations before the other commits; without
    a lock on the order both would see the other's still pending and strand it (a real certbot
    run once waited out its 90 s finalize deadline on exactly that)."""
    a = world.accounts["a"]
    response = world.order(a, [{"type": "ip", "value": f"127.0.0.{n}"} for n in (41, 42)])
    assert response.status_code == 201, response.get_data(as_text=True)
    order_id = response.headers["Location"].rsplit("/", 1)[1]
    with world.core.database.read() as session:
        order = session.scalars(select(OrderRow).where(OrderRow.public_id == order_id)).one()
        authz_ids = session.scalars(
            select(OrderAuthorizationRow.authorization_id)
            .where(OrderAuthorizationRow.order_id == order.id)
            .order_by(OrderAuthorizationRow.authorization_id)
        ).all()
    assert len(authz_ids) == 2
    now = world.core.now()

    def validate(session: Any, authz_id: int) -> None:
        authz = session.get(AuthorizationRow, authz_id)
        assert authz.status == "pending"
        authz.status, authz.validated_at = "valid", now
        session.flush()
        refresh_orders(session, authz_id, now)

    second_started = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            second_started.set()
            with world.core.database.write() as session:
                validate(session, authz_ids[1])
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    with world.core.database.write() as session:
        validate(session, authz_ids[0])
        thread = threading.Thread(target=second)
        thread.start()
        second_started.wait(5)
        # Give the second transaction time to reach its read while the first is uncommitted
        # (if it gets there later the test passes anyway; it cannot fail spuriously).
        thread.join(0.5)
    thread.join(30)
    assert not thread.is_alive() and not errors, errors
    with world.core.database.read() as session:
        order = session.scalars(select(OrderRow).where(OrderRow.public_id == order_id)).one()
        assert order.status == "ready"


def test_tls_alpn01_validates_an_ip_identifier(world: World, tmp_path: Path):
    b = world.accounts["b"]
    response = world.order(b, [{"type": "ip", "value": "127.0.0.1"}])
    authz_url = response.get_json()["authorizations"][0]
    authz = world.get(b, authz_url).get_json()
    challenge = next(c for c in authz["challenges"] if c["type"] == "tls-alpn-01")
    key_authorization = f"{challenge['token']}.{b.key.thumbprint}"
    with alpn_responder(tmp_path, world.core.config.frontends["acme"], key_authorization):
        world.client.post(b.key, path_of(challenge["url"]), {}, kid=b.url)
        world.run_jobs()
    authz = world.get(b, authz_url).get_json()
    assert authz["status"] == "valid", authz
    assert [c["type"] for c in authz["challenges"]] == ["tls-alpn-01"]


class alpn_responder:
    """A TLS server speaking acme-tls/1 with the RFC 8737 certificate for 127.0.0.1."""

    def __init__(self, directory: Path, acme_config: Any, key_authorization: str) -> None:
        import datetime
        import ipaddress
        import socket
        import ssl

        port = acme_config["validation"]["tls_alpn_port"]
        key = ec.generate_private_key(ec.SECP256R1())
        digest = hashlib.sha256(key_authorization.encode()).digest()
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme")]))
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(
                x509.UnrecognizedExtension(
                    x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"), b"\x04\x20" + digest
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        cert_path, key_path = directory / "alpn.crt", directory / "alpn.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_path, key_path)
        self.context.set_alpn_protocols(["acme-tls/1"])
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        import ssl

        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        try:
            with self.context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    def __enter__(self) -> alpn_responder:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.listener.close()
        self.thread.join(10)


def test_deactivating_an_authorization_invalidates_its_pending_order(world: World):
    b = world.accounts["b"]
    response = world.order(b, [{"type": "ip", "value": "127.0.0.8"}])
    authz_url = response.get_json()["authorizations"][0]
    deactivated = world.client.post(b.key, path_of(authz_url), {"status": "deactivated"}, kid=b.url)
    assert deactivated.status_code == 200
    assert deactivated.get_json()["status"] == "deactivated"
    assert world.get(b, response.headers["Location"]).get_json()["status"] == "invalid"


# --- keyChange ----------------------------------------------------------------------------------


def test_key_change_rolls_the_account_key_and_refuses_the_old_one(world: World):
    account = world.new_account()
    new_key = Key("rsa")
    url = BASE + "/acme/key-change"
    inner = world.client.jws(
        new_key, url, {"account": account.url, "oldKey": account.key.jwk}, protected={"nonce": None}
    )
    response = world.client.post(account.key, "/acme/key-change", inner, kid=account.url)
    assert response.status_code == 200, response.get_data(as_text=True)
    refused = world.client.post(account.key, account.path, None, kid=account.url)
    assert_problem(refused, "malformed", 400)
    assert world.client.post(new_key, account.path, None, kid=account.url).status_code == 200
    gone = world.client.post(account.key, "/acme/new-account", {"onlyReturnExisting": True})
    assert_problem(gone, "accountDoesNotExist", 400)
    # A key that already belongs to another account is a conflict naming that account.
    b = world.accounts["b"]
    inner = world.client.jws(
        b.key, url, {"account": account.url, "oldKey": new_key.jwk}, protected={"nonce": None}
    )
    conflict = world.client.post(new_key, "/acme/key-change", inner, kid=account.url)
    assert_problem(conflict, "malformed", 409)
    assert conflict.headers["Location"] == b.url


# --- revocation ---------------------------------------------------------------------------------


def test_revoke_cert_authorisation_rules(world: World):
    a, b = world.accounts["a"], world.accounts["b"]
    _, _, der, certificate_key = world.issue(a, ["127.0.0.1"])
    stranger = world.new_account()
    before = world.snapshot()
    refused = world.client.post(
        stranger.key, "/acme/revoke-cert", {"certificate": b64(der)}, kid=stranger.url
    )
    assert_problem(refused, "unauthorized", 403)
    bad_reason = world.client.post(
        a.key, "/acme/revoke-cert", {"certificate": b64(der), "reason": 7}, kid=a.url
    )
    assert_problem(bad_reason, "badRevocationReason", 400)
    wrong_key = world.client.post(b.key, "/acme/revoke-cert", {"certificate": b64(der)})
    assert_problem(wrong_key, "unauthorized", 403)
    assert world.snapshot() == before
    # The certificate's own key may revoke it (jwk, no account).
    revoked = world.client.post(
        certificate_key, "/acme/revoke-cert", {"certificate": b64(der), "reason": 1}
    )
    assert revoked.status_code == 200, revoked.get_data(as_text=True)
    again = world.client.post(a.key, "/acme/revoke-cert", {"certificate": b64(der)}, kid=a.url)
    assert_problem(again, "alreadyRevoked", 400)


def test_revoke_cert_by_an_account_holding_authorizations_for_every_name(world: World):
    a = world.accounts["a"]
    _, _, der, _ = world.issue(a, ["127.0.0.1"])
    holder = world.new_account()
    order = world.order(holder, [{"type": "ip", "value": "127.0.0.1"}]).get_json()
    assert world.validate_http01(holder, order["authorizations"][0])["status"] == "valid"
    response = world.client.post(
        holder.key, "/acme/revoke-cert", {"certificate": b64(der), "reason": 4}, kid=holder.url
    )
    assert response.status_code == 200, response.get_data(as_text=True)


# --- ARI ----------------------------------------------------------------------------------------


def ari_id(der: bytes) -> str:
    certificate = x509.load_der_x509_certificate(der)
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = certificate.serial_number
    return (
        f"{b64(aki.key_identifier)}.{b64(serial.to_bytes((serial.bit_length() + 8) // 8, 'big'))}"
    )


def test_renewal_info_windows_pull_forward_and_revocation(world: World):
    from datetime import datetime

    from acme_server import ari

    a = world.accounts["a"]
    _, _, der, certificate_key = world.issue(a, ["127.0.0.1"])
    certificate = x509.load_der_x509_certificate(der)
    path = "/acme/renewal-info/" + ari_id(der)
    response = world.client.http.get(path, base_url=BASE)
    assert response.status_code == 200
    assert int(response.headers["Retry-After"]) > 0
    window = response.get_json()["suggestedWindow"]
    start = datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
    assert certificate.not_valid_before_utc < start < end < certificate.not_valid_after_utc
    ari.pull_forward(
        world.core,
        serial=format(certificate.serial_number, "x"),
        issuer_name=None,
        issued_before=None,
        window_hours=2,
        explanation_url="https://pki.test/incident",
        actor="test",
        channel="cli",
    )
    pulled = world.client.http.get(path, base_url=BASE).get_json()
    pulled_start = datetime.fromisoformat(pulled["suggestedWindow"]["start"].replace("Z", "+00:00"))
    assert pulled_start < start and pulled["explanationURL"] == "https://pki.test/incident"
    world.client.post(certificate_key, "/acme/revoke-cert", {"certificate": b64(der)})
    revoked = world.client.http.get(path, base_url=BASE).get_json()["suggestedWindow"]
    assert datetime.fromisoformat(revoked["end"].replace("Z", "+00:00")) < world.core.now()
    unknown = world.client.http.get("/acme/renewal-info/AAAA.AQ", base_url=BASE)
    assert_problem(unknown, "malformed", 404)


def test_new_order_replaces_only_own_certificates_once(world: World):
    a, b = world.accounts["a"], world.accounts["b"]
    _, _, der, _ = world.issue(a, ["127.0.0.1"])
    identifiers = [{"type": "ip", "value": "127.0.0.1"}]
    foreign = world.order(b, identifiers, replaces=ari_id(der))
    assert_problem(foreign, "unauthorized", 403)
    first = world.order(a, identifiers, replaces=ari_id(der))
    assert first.status_code == 201 and first.get_json()["replaces"] == ari_id(der)
    second = world.order(a, identifiers, replaces=ari_id(der))
    assert_problem(second, "alreadyReplaced", 409)


# --- External Account Binding -------------------------------------------------------------------


def eab_binding(key: Key, key_id: str, hmac_key: str, url: str) -> dict[str, Any]:
    import hmac as hmac_module

    protected = b64json({"alg": "HS256", "kid": key_id, "url": url})
    payload = b64json(key.jwk)
    mac_key = base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))
    signature = hmac_module.new(mac_key, f"{protected}.{payload}".encode(), hashlib.sha256)
    return {"protected": protected, "payload": payload, "signature": b64(signature.digest())}


def test_external_account_binding_is_required_bound_once_and_recorded_as_owner(world: World):
    from acme_server import eab

    client = RawClient(world.client.http, "/acme/eab")
    url = BASE + "/acme/eab/new-account"
    key = Key()
    before = world.snapshot()
    missing = client.post(key, "/acme/eab/new-account", {"termsOfServiceAgreed": True})
    assert_problem(missing, "externalAccountRequired", 401)
    assert world.snapshot() == before
    created = eab.create_key(
        world.core, owner="team-x", directory="eab", actor="test", channel="cli"
    )
    wrong = eab_binding(key, created.key_id, b64(b"\x00" * 32), url)
    refused = client.post(key, "/acme/eab/new-account", {"externalAccountBinding": wrong})
    assert_problem(refused, "unauthorized", 403)
    binding = eab_binding(key, created.key_id, created.hmac_key, url)
    response = client.post(key, "/acme/eab/new-account", {"externalAccountBinding": binding})
    assert response.status_code == 201, response.get_data(as_text=True)
    other = Key()
    reused = client.post(
        other,
        "/acme/eab/new-account",
        {"externalAccountBinding": eab_binding(other, created.key_id, created.hmac_key, url)},
    )
    assert_problem(reused, "unauthorized", 403)
    with world.core.database.read() as session:
        owner = session.execute(
            text("SELECT owner FROM acme_accounts WHERE eab_key_id = :k"), {"k": created.key_id}
        ).scalar_one()
    assert owner == "team-x"


def test_admin_api_creates_lists_and_revokes_eab_keys(world: World):
    from ca import api_tokens

    with world.core.database.write() as session:
        token, _ = api_tokens.create_token(
            session, "acme-admin", frozenset({"admin"}), world.core.now()
        )
    http = world.client.http
    headers = {"Authorization": f"Bearer {token}"}
    created = http.post("/api/v1/acme/eab", json={"owner": "team-y"}, headers=headers)
    assert created.status_code == 201
    key_id = created.get_json()["key_id"]
    assert created.get_json()["hmac_key"]
    listed = http.get("/api/v1/acme/eab", headers=headers).get_json()["keys"]
    entry = next(k for k in listed if k["key_id"] == key_id)
    assert entry["status"] == "unused" and "hmac_key" not in entry
    revoked = http.delete(f"/api/v1/acme/eab/{key_id}", headers=headers)
    assert revoked.status_code == 200 and revoked.get_json()["status"] == "revoked"
    assert http.get("/api/v1/acme/eab").status_code == 401


# --- rate limits --------------------------------------------------------------------------------

LIMITED = """
[frontends.acme.rate_limits]
new_orders_per_account = {{ count = 2, period = "1h" }}
new_accounts_per_ip = {{ count = 2, period = "1h" }}
failed_validations = {{ count = 1, period = "1h" }}
[frontends.acme.validation]
http_port = {http_port}
immediate = false
denied_networks = []
attempts = 1
timeout = 2
"""


def test_rate_limits_answer_rate_limited_with_retry_after(tmp_path: Path, database_url: str):
    core = make_core(
        tmp_path, database_url, SoftwareKeyStore(), extra=LIMITED.format(http_port=free_port())
    )
    try:
        app = create_app(core=core)
        world = World(core, app, RawClient(app.test_client()), database_url, None, 0)  # type: ignore[arg-type]
        first, second = world.new_account(), world.new_account()
        before = world.snapshot()
        third = world.client.post(Key(), "/acme/new-account", {"termsOfServiceAgreed": True})
        body = assert_problem(third, "rateLimited", 429)
        assert 0 < int(third.headers["Retry-After"]) <= 3600 and "127.0.0.1" in body["detail"]
        assert world.snapshot() == before

        for value in ("127.0.0.1", "127.0.0.2"):
            assert world.order(first, [{"type": "ip", "value": value}]).status_code == 201
        before = world.snapshot()
        assert_problem(
            world.order(first, [{"type": "ip", "value": "127.0.0.3"}]), "rateLimited", 429
        )
        assert world.snapshot() == before

        # One failed validation (nothing listens on the http-01 port) uses up the limit for the
        # account and name: a new order for that name is refused, another name is not.
        response = world.order(second, [{"type": "ip", "value": "127.0.0.1"}])
        authz = world.get(second, response.get_json()["authorizations"][0]).get_json()
        challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
        world.client.post(second.key, path_of(challenge["url"]), {}, kid=second.url)
        world.run_jobs()
        assert world.get(second, response.headers["Location"]).get_json()["status"] == "invalid"
        again = world.order(second, [{"type": "ip", "value": "127.0.0.1"}])
        assert_problem(again, "rateLimited", 429)
        assert world.order(second, [{"type": "ip", "value": "127.0.0.2"}]).status_code == 201
        assert core.metrics.rate_limited.labels(channel="acme", limit="failed_validations")
    finally:
        core.close()
