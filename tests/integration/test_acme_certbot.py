"""certbot (from PyPI, unmodified) against a real `privca serve` over HTTPS, on both databases.

One server, one loopback DNS server and one certbot configuration per database, shared by the
tests of this module in order: register, a 3-name http-01 order (standalone on a free high
port), a wildcard through dns-01 (manual hooks writing into the test DNS server), renew, update
account, revoke by account key, revoke by certificate key, EAB registration on a second
directory, unregister. Every certificate goes through openssl verify and pkilint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import text

from ca.storage import Database
from tests.integration.acme_clients import ClientWorld, client_world

pytestmark = pytest.mark.integration

CERTBOT = str(Path(sys.executable).parent / "certbot")
# certbot --manual hook: publish/remove a dns-01 value as a file the test DNS server reads.
HOOK_SOURCE = """
import os, sys, uuid
from pathlib import Path
action, records = sys.argv[1], Path(sys.argv[2])
name = "_acme-challenge." + os.environ["CERTBOT_DOMAIN"].lower().rstrip(".")
if action == "auth":
    (records / f"{name}.{uuid.uuid4().hex}.txt").write_text(os.environ["CERTBOT_VALIDATION"])
else:
    for path in records.glob(f"{name}.*.txt"):
        path.unlink()
"""


class ACMEWorld(ClientWorld):
    def certbot(
        self, *args: str, directory: str = "/acme/directory", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, REQUESTS_CA_BUNDLE=str(self.server.root_pem))
        command = [
            CERTBOT,
            "--server",
            self.server.base_url + directory,
            "--config-dir",
            str(self.root / "certbot" / "config"),
            "--work-dir",
            str(self.root / "certbot" / "work"),
            "--logs-dir",
            str(self.root / "certbot" / "logs"),
            "--non-interactive",
            "--agree-tos",
            *args,
        ]
        return self.run_client(command, env=env, check=check)

    def live(self, name: str) -> Path:
        return self.root / "certbot" / "config" / "live" / name


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ACMEWorld]:
    root = tmp_path_factory.mktemp(f"acme-{request.param}")
    with client_world(request, root, ACMEWorld) as world:
        yield world


def register(world: ACMEWorld) -> subprocess.CompletedProcess[str]:
    return world.certbot("register", "-m", "pki-team@example.com", "--no-eff-email")


def test_certbot_registers_an_account(world: ACMEWorld):
    result = world.once("register", register)
    assert "Account registered" in result.stdout + result.stderr


def issue_web(world: ACMEWorld) -> None:
    world.once("register", register)
    world.certbot(
        "certonly",
        "--standalone",
        "--http-01-port",
        str(world.http_port),
        "--http-01-address",
        "127.0.0.1",
        "--key-type",
        "ecdsa",
        "-d",
        "www.web.test",
        "-d",
        "api.web.test",
        "-d",
        "web.test",
        "--cert-name",
        "web",
    )


def test_certbot_gets_a_three_name_certificate_over_http01(world: ACMEWorld):
    world.once("web", issue_web)
    leaf = world.verify_full_chain(
        world.live("web") / "fullchain.pem", {"www.web.test", "api.web.test", "web.test"}
    )
    row = world.certificate_row(leaf)
    assert row.channel == "acme" and row.status == "issued"
    assert row.owner is not None and row.owner.startswith("acme-account:")


def issue_wild(world: ACMEWorld) -> None:
    world.once("register", register)
    records = str(world.root / "dns-records")
    hook = world.root / "dns_hook.py"
    hook.write_text(HOOK_SOURCE)
    world.certbot(
        "certonly",
        "--manual",
        "--preferred-challenges",
        "dns",
        "--manual-auth-hook",
        f"{sys.executable} {hook} auth {records}",
        "--manual-cleanup-hook",
        f"{sys.executable} {hook} cleanup {records}",
        "-d",
        "*.wild.test",
        "-d",
        "wild.test",
        "--cert-name",
        "wild",
    )


def test_certbot_gets_a_wildcard_through_dns01_manual_hooks(world: ACMEWorld):
    world.once("wild", issue_wild)
    world.verify_full_chain(world.live("wild") / "fullchain.pem", {"*.wild.test", "wild.test"})
    assert not list((world.root / "dns-records").glob("*.txt")), "cleanup hook ran"


def test_certbot_renews_reusing_valid_authorizations(world: ACMEWorld):
    world.once("web", issue_web)
    before = x509.load_pem_x509_certificate((world.live("web") / "cert.pem").read_bytes())
    world.certbot("renew", "--cert-name", "web", "--force-renewal", "--no-random-sleep-on-renew")
    after = world.verify_full_chain(
        world.live("web") / "fullchain.pem", {"www.web.test", "api.web.test", "web.test"}
    )
    assert after.serial_number != before.serial_number


def test_certbot_updates_the_account_contact(world: ACMEWorld):
    world.once("register", register)
    world.certbot("update_account", "-m", "new-contact@example.com", "--no-eff-email")
    database = Database(world.database_url)
    try:
        with database.read() as session:
            contacts = session.execute(text("SELECT contact FROM acme_accounts")).scalars().all()
    finally:
        database.dispose()
    assert ["mailto:new-contact@example.com"] in [json.loads(c) for c in contacts]


def test_certbot_revokes_with_the_account_key(world: ACMEWorld):
    world.once("wild", issue_wild)
    leaf = x509.load_pem_x509_certificate((world.live("wild") / "cert.pem").read_bytes())
    world.certbot(
        "revoke", "--cert-name", "wild", "--reason", "superseded", "--no-delete-after-revoke"
    )
    row = world.certificate_row(leaf)
    assert row.status == "revoked" and row.revocation_reason == 4


def test_certbot_revokes_with_the_certificate_key(world: ACMEWorld):
    world.once("web", issue_web)
    live = world.live("web")
    leaf = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    world.certbot(
        "revoke",
        "--cert-path",
        str(live / "cert.pem"),
        "--key-path",
        str(live / "privkey.pem"),
        "--reason",
        "keycompromise",
        "--no-delete-after-revoke",
    )
    row = world.certificate_row(leaf)
    assert row.status == "revoked" and row.revocation_reason == 1


def test_certbot_registers_with_external_account_binding(world: ACMEWorld):
    created = json.loads(
        world.server.cli("acme", "eab", "create", "--owner", "team-payments", "--json").stdout
    )
    eab_root = world.root / "certbot-eab"
    eab_world = ACMEWorld(world.server, world.dns, world.database_url, world.http_port, eab_root)
    refused = eab_world.certbot(
        "register",
        "--register-unsafely-without-email",
        directory="/acme/eab/directory",
        check=False,
    )
    assert refused.returncode != 0
    assert (
        "externalAccountRequired" in refused.stdout + refused.stderr
        or "external" in (refused.stdout + refused.stderr).lower()
    )
    eab_world.certbot(
        "register",
        "--register-unsafely-without-email",
        "--eab-kid",
        created["key_id"],
        "--eab-hmac-key",
        created["hmac_key"],
        directory="/acme/eab/directory",
    )
    eab_world.certbot(
        "certonly",
        "--standalone",
        "--http-01-port",
        str(world.http_port),
        "--http-01-address",
        "127.0.0.1",
        "-d",
        "payments.test",
        "--cert-name",
        "payments",
        directory="/acme/eab/directory",
    )
    leaf = eab_world.verify_full_chain(
        eab_world.live("payments") / "fullchain.pem", {"payments.test"}
    )
    assert world.certificate_row(leaf).owner == "team-payments"
    listed = json.loads(world.server.cli("acme", "eab", "list", "--json").stdout)
    assert [k["status"] for k in listed if k["key_id"] == created["key_id"]] == ["bound"]


def test_certbot_unregisters_and_the_account_is_refused_afterwards(world: ACMEWorld):
    world.once("register", register)
    world.certbot("unregister")
    database = Database(world.database_url)
    try:
        with database.read() as session:
            statuses = (
                session.execute(text("SELECT status FROM acme_accounts WHERE directory = ''"))
                .scalars()
                .all()
            )
    finally:
        database.dispose()
    assert statuses == ["deactivated"]
