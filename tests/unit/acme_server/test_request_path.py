"""The request path's shortcuts keep RFC 8555's checks, on SQLite and PostgreSQL, in process.

A request signed with `kid` is verified with the account key this process remembers, and its
nonce is spent by a statement that also requires the account to be valid and to hold that key
(acme_server.account_cache); a POST-as-GET runs without a transaction on PostgreSQL. These tests
change accounts behind the process's back (as another node or the admin API would) and check
that every request still gets the answer and error it got before the shortcuts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, inspect, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm.attributes import set_committed_value

from acme_server.account_cache import AccountCache
from acme_server.jws import load_jwk
from acme_server.storage import AccountRow, AuthorizationRow, ChallengeRow, OrderRow, row_object
from ca.web.app import create_app
from tests.integration.test_acme_protocol import BASE, Key, RawClient
from tests.support.core_factory import make_core
from tests.support.software_keystore import SoftwareKeyStore

ERR = "urn:ietf:params:acme:error:"


class Client:
    def __init__(self, app: Any, core: Any) -> None:
        self.app = app
        self.core = core
        self.raw = RawClient(app.test_client())
        self.acme = app.extensions["privca.acme"]

    def new_account(self, key: Key) -> str:
        response = self.raw.post(key, "/acme/new-account", {"termsOfServiceAgreed": True})
        assert response.status_code == 201, response.get_data(as_text=True)
        return str(response.headers["Location"])

    def post(self, key: Key, path: str, payload: Any, kid: str, nonce: str | None = None) -> Any:
        return self.raw.post(key, path, payload, kid=kid, nonce=nonce)

    def new_order(self, key: Key, kid: str) -> Any:
        identifiers = [{"type": "ip", "value": "192.0.2.7"}]
        return self.post(key, "/acme/new-order", {"identifiers": identifiers}, kid)


@pytest.fixture
def client(tmp_path: Path, database_url: str) -> Iterator[Client]:
    core = make_core(tmp_path, database_url, SoftwareKeyStore())
    try:
        yield Client(create_app(core=core), core)
    finally:
        core.database.dispose()


def _set_account(client: Client, kid: str, **values: Any) -> None:
    """Change the account row directly, as another node would."""
    public_id = kid.rsplit("/", 1)[1]
    with client.core.database.write() as session:
        session.execute(update(AccountRow).where(AccountRow.public_id == public_id).values(values))


@contextmanager
def _statements() -> Iterator[list[str]]:
    """Every statement any engine runs meanwhile (SQLite writes use an engine of their own)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_a_known_account_is_not_read_again_but_its_status_is_checked(client: Client):
    key = Key()
    kid = client.new_account(key)
    order = client.new_order(key, kid)
    assert order.status_code == 201
    with _statements() as seen:
        response = client.post(key, order.headers["Location"][len(BASE) :], None, kid)
    assert response.status_code == 200 and response.get_json()["status"] == "pending"
    assert not [s for s in seen if s.startswith("SELECT acme_accounts.")]
    spend = [s for s in seen if "acme_used_nonces" in s]
    assert len(spend) == 1 and "acme_accounts" in spend[0]  # one statement for both


def test_an_account_deactivated_elsewhere_is_refused_without_spending_the_nonce(client: Client):
    key = Key()
    kid = client.new_account(key)
    assert client.new_order(key, kid).status_code == 201  # the process now knows the key
    _set_account(client, kid, status="deactivated")
    nonce = client.raw.nonce()
    response = client.post(key, kid[len(BASE) :], None, kid, nonce=nonce)
    assert response.status_code == 403
    assert response.get_json()["type"] == ERR + "unauthorized"
    assert response.get_json()["detail"] == "the account is deactivated"
    assert client.acme.accounts.get("", kid.rsplit("/", 1)[1]) is None
    with client.core.database.read() as session:
        used = session.execute(
            text("SELECT count(*) FROM acme_used_nonces WHERE nonce = :n"), {"n": nonce}
        ).scalar()
    assert used == 0  # as before the shortcut: the status is checked before the nonce is spent


def test_a_key_rolled_over_elsewhere_refuses_the_old_key_and_accepts_the_new(client: Client):
    old, new = Key(), Key()
    kid = client.new_account(old)
    assert client.new_order(old, kid).status_code == 201
    assert client.acme.accounts.get("", kid.rsplit("/", 1)[1]) is not None
    rolled = load_jwk(new.jwk)
    _set_account(client, kid, jwk=rolled.canonical_json(), key_thumbprint=rolled.thumbprint)
    refused = client.new_order(old, kid)
    assert refused.status_code == 400
    assert refused.get_json()["type"] == ERR + "malformed"
    accepted = client.new_order(new, kid)
    assert accepted.status_code == 201, accepted.get_data(as_text=True)
    known = client.acme.accounts.get("", kid.rsplit("/", 1)[1])
    assert known is not None and known.key.thumbprint == rolled.thumbprint
    # The old key stays refused now that the new one is remembered.
    assert client.new_order(old, kid).status_code == 400


def test_key_change_in_this_process_forgets_the_remembered_key(client: Client):
    old, new = Key(), Key()
    kid = client.new_account(old)
    assert client.new_order(old, kid).status_code == 201
    url = BASE + "/acme/key-change"
    # The inner JWS carries no nonce.
    inner = client.raw.jws(new, url, {"account": kid, "oldKey": old.jwk}, protected={"nonce": None})
    response = client.post(old, "/acme/key-change", inner, kid)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert client.acme.accounts.get("", kid.rsplit("/", 1)[1]) is None
    assert client.new_order(old, kid).status_code == 400
    assert client.new_order(new, kid).status_code == 201


def test_a_replayed_nonce_is_refused_for_a_known_account(client: Client):
    key = Key()
    kid = client.new_account(key)
    order = client.new_order(key, kid)
    path = order.headers["Location"][len(BASE) :]
    nonce = client.raw.nonce()
    assert client.post(key, path, None, kid, nonce=nonce).status_code == 200
    replay = client.post(key, path, None, kid, nonce=nonce)
    assert replay.status_code == 400 and replay.get_json()["type"] == ERR + "badNonce"
    assert replay.headers["Replay-Nonce"]


def test_a_post_as_get_for_a_missing_resource_still_spends_its_nonce(client: Client):
    key = Key()
    kid = client.new_account(key)
    nonce = client.raw.nonce()
    missing = client.post(key, "/acme/order/no-such-order", None, kid, nonce=nonce)
    assert missing.status_code == 404
    again = client.post(key, "/acme/order/no-such-order", None, kid, nonce=nonce)
    assert again.status_code == 400 and again.get_json()["type"] == ERR + "badNonce"


def test_the_certificate_download_and_order_poll_refuse_another_account(client: Client):
    key, other = Key(), Key()
    kid, other_kid = client.new_account(key), client.new_account(other)
    order = client.new_order(key, kid)
    path = order.headers["Location"][len(BASE) :]
    for resource in (path, path.replace("/order/", "/cert/")):
        response = client.post(other, resource, None, other_kid)
        assert response.status_code == 403, resource
        assert response.get_json()["type"] == ERR + "unauthorized"
    no_certificate = client.post(key, path.replace("/order/", "/cert/"), None, kid)
    assert no_certificate.status_code == 404


def test_account_cache_drops_the_oldest_entry_when_full():
    cache = AccountCache(size=2)
    account_key = load_jwk(Key().jwk)
    rows = [
        AccountRow(
            id=i,
            public_id=f"a{i}",
            directory="",
            key_thumbprint=account_key.thumbprint,
            jwk=account_key.canonical_json(),
            status="valid",
            contact="[]",
            terms_agreed=True,
            eab_key_id=None,
            owner=None,
            created_at=None,
            created_ip=None,
        )
        for i in range(3)
    ]
    for row in rows:
        cache.remember(row, account_key)
    assert len(cache) == 2
    assert cache.get("", "a0") is None
    assert cache.get("", "a2") is not None and cache.get("", "a2").account is not rows[2]
    cache.forget("", "a2")
    assert cache.get("", "a2") is None and cache.get("", "a1") is not None


def test_row_object_matches_the_constructor_and_stays_out_of_sessions():
    values = (7, "pub", 3, "pending", datetime.now(UTC), "[]", "default")
    values += (None, None, None, None, 42, datetime.now(UTC))
    built = row_object(OrderRow, values)
    expected = OrderRow(**dict(zip(OrderRow.__table__.c.keys(), values, strict=True)))
    for name in OrderRow.__table__.c.keys():
        assert getattr(built, name) == getattr(expected, name), name
    assert inspect(built).transient
    set_committed_value(built, "status", "processing")
    assert built.status == "processing"
    # A joined row: the second table's columns start after the first's.
    challenge_values = (5, "c", 9, "http-01", "tok", "pending", None, None)
    authorization_values = (9, "a", 3, "ip", "192.0.2.1", False, "pending", values[4], None)
    joined = challenge_values + authorization_values + (values[4],)
    authz = row_object(AuthorizationRow, joined, len(challenge_values))
    assert (authz.id, authz.identifier_value, authz.created_at) == (9, "192.0.2.1", values[4])
    assert row_object(ChallengeRow, joined).token == "tok"
