"""lego (Debian package, unmodified) against a real `privca serve` over HTTPS, on both databases.

One server, one loopback DNS server and one lego data directory per database, shared by the
tests of this module in order: register and a 2-name http-01 order (lego's own server on a free
high loopback port), a wildcard through dns-01 (lego's exec provider writing into the test DNS
server, which lego also uses as its resolver), renew, revoke, and EAB registration on a second
directory. lego trusts privca's root through LEGO_CA_CERTIFICATES. Every certificate goes through
openssl verify and pkilint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import text

from ca.storage import Database
from tests.integration.acme_clients import ClientWorld, client_world

LEGO = shutil.which("lego")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(LEGO is None, reason="lego is not installed (scripts/install --test)"),
]

EMAIL = "pki-team@example.com"
# lego's exec DNS provider runs `EXEC_PATH present|cleanup <fqdn> <value>`: publish or remove
# the value as a file the test DNS server reads. One file per value, because a wildcard and its
# base name share one _acme-challenge name and lego cleans each value up on its own.
EXEC_HOOK_SOURCE = """
import hashlib, sys
from pathlib import Path
action, fqdn, value = sys.argv[1:4]
records = Path({records!r})
name = fqdn.lower().rstrip(".")
path = records / f"{{name}}.{{hashlib.sha256(value.encode()).hexdigest()[:16]}}.txt"
if action == "present":
    path.write_text(value)
elif action == "cleanup":
    path.unlink(missing_ok=True)
"""


class LegoWorld(ClientWorld):
    def lego(
        self,
        *args: str,
        domains: tuple[str, ...],
        directory: str = "/acme/directory",
        path: Path | None = None,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run lego with this world's server, trust anchor and data path; ARGS go last."""
        assert LEGO is not None
        environment = dict(os.environ, LEGO_CA_CERTIFICATES=str(self.server.root_pem))
        environment.update(env or {})
        command = [
            LEGO,
            "--server",
            self.server.base_url + directory,
            "--path",
            str(path or self.root / "lego"),
            "--email",
            EMAIL,
            "--accept-tos",
            *[option for domain in domains for option in ("--domains", domain)],
            *args,
        ]
        return self.run_client(command, env=environment, check=check)

    def http_options(self) -> tuple[str, ...]:
        return ("--http", "--http.port", f"127.0.0.1:{self.http_port}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LegoWorld]:
    root = tmp_path_factory.mktemp(f"lego-{request.param}")
    with client_world(request, root, LegoWorld) as world:
        yield world


def certificate_files(world: LegoWorld, domain: str, path: Path | None = None) -> Path:
    """lego's certificate bundle for DOMAIN (its file name turns "*" into "_")."""
    return (path or world.root / "lego") / "certificates" / f"{domain.replace('*', '_')}.crt"


WEB_NAMES = ("web.test", "www.web.test")
WILD_NAMES = ("*.wild.test", "wild.test")


def issue_web(world: LegoWorld) -> subprocess.CompletedProcess[str]:
    return world.lego(*world.http_options(), "run", domains=WEB_NAMES)


def test_lego_registers_and_gets_a_two_name_certificate_over_http01(world: LegoWorld):
    world.once("web", issue_web)
    accounts = list((world.root / "lego" / "accounts").rglob("account.json"))
    assert len(accounts) == 1
    account_url = json.loads(accounts[0].read_text())["registration"]["uri"]
    assert account_url.startswith(world.server.base_url + "/acme/")
    leaf = world.verify_full_chain(certificate_files(world, "web.test"), set(WEB_NAMES))
    row = world.certificate_row(leaf)
    assert row.channel == "acme" and row.status == "issued"
    assert row.owner == f"acme-account:{account_url}"


def issue_wild(world: LegoWorld) -> subprocess.CompletedProcess[str]:
    records = world.root / "dns-records"
    hook = world.root / "lego_dns_hook.py"
    hook.write_text(f"#!{sys.executable}\n" + EXEC_HOOK_SOURCE.format(records=str(records)))
    hook.chmod(0o755)
    return world.lego(
        "--dns",
        "exec",
        "--dns.resolvers",
        f"127.0.0.1:{world.dns.port}",
        # The test DNS server is authoritative for "test" but serves no SOA/NS records, so
        # lego's walk to the authoritative servers would fail; the resolver's answer suffices.
        "--dns.disable-cp",
        "run",
        domains=WILD_NAMES,
        env={
            "EXEC_PATH": str(hook),
            "EXEC_POLLING_INTERVAL": "1",
            "EXEC_PROPAGATION_TIMEOUT": "30",
        },
    )


def test_lego_gets_a_wildcard_through_dns01_and_the_exec_provider(world: LegoWorld):
    world.once("wild", issue_wild)
    world.verify_full_chain(certificate_files(world, "*.wild.test"), set(WILD_NAMES))
    assert not list((world.root / "dns-records").glob("*.txt")), "lego cleaned its records up"


def test_lego_renews_a_certificate(world: LegoWorld):
    world.once("web", issue_web)
    bundle = certificate_files(world, "web.test")
    before = x509.load_pem_x509_certificates(bundle.read_bytes())[0]
    # --days beyond the certificate's lifetime: renew now rather than near expiry.
    world.lego(
        *world.http_options(), "renew", "--days", "10000", "--no-random-sleep", domains=WEB_NAMES
    )
    after = world.verify_full_chain(bundle, set(WEB_NAMES))
    assert after.serial_number != before.serial_number
    assert world.certificate_row(after).status == "issued"


def test_lego_revokes_a_certificate(world: LegoWorld):
    world.once("wild", issue_wild)
    leaf = x509.load_pem_x509_certificates(certificate_files(world, "*.wild.test").read_bytes())[0]
    world.lego("revoke", "--reason", "4", "--keep", domains=("*.wild.test",))
    row = world.certificate_row(leaf)
    assert row.status == "revoked" and row.revocation_reason == 4


def eab_accounts(world: LegoWorld) -> int:
    database = Database(world.database_url)
    try:
        with database.read() as session:
            return session.execute(
                text("SELECT count(*) FROM acme_accounts WHERE directory = 'eab'")
            ).scalar_one()
    finally:
        database.dispose()


def test_lego_registers_with_external_account_binding(world: LegoWorld):
    created = json.loads(
        world.server.cli("acme", "eab", "create", "--owner", "team-payments", "--json").stdout
    )
    eab_path = world.root / "lego-eab"
    refused = world.lego(
        *world.http_options(),
        "run",
        domains=("payments.test",),
        directory="/acme/eab/directory",
        path=eab_path,
        check=False,
    )
    assert refused.returncode != 0
    # lego reads meta.externalAccountRequired from the directory and stops before newAccount.
    assert "requires External Account Binding" in refused.stdout + refused.stderr
    assert eab_accounts(world) == 0
    world.lego(
        "--eab",
        "--kid",
        created["key_id"],
        "--hmac",
        created["hmac_key"],
        *world.http_options(),
        "run",
        domains=("payments.test",),
        directory="/acme/eab/directory",
        path=eab_path,
    )
    leaf = world.verify_full_chain(
        certificate_files(world, "payments.test", eab_path), {"payments.test"}
    )
    assert world.certificate_row(leaf).owner == "team-payments"
    assert eab_accounts(world) == 1
    listed = json.loads(world.server.cli("acme", "eab", "list", "--json").stdout)
    assert [k["status"] for k in listed if k["key_id"] == created["key_id"]] == ["bound"]
