"""What the real-client ACME tests (certbot, lego) share: one `privca serve` per database with a
loopback DNS server for dns-01, an EAB-only second directory, and the inventory row of a
certificate a client got."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select

from ca.storage import Database
from ca.storage.models import CertificateRow
from tests.conftest import module_database
from tests.integration.dns_server import TestDNSServer
from tests.integration.server import RunningServer, free_port, start_server
from tests.support.pki_lint import lint_certificate

W = TypeVar("W", bound="ClientWorld")


def lint_clean_allowing_wildcards(der: bytes) -> list[str]:
    """pkilint findings, less the PKIX linter's refusal of a leftmost "*" label: RFC 5280 leaves
    wildcards undefined and pkilint's PKIX profile calls them invalid syntax, while RFC 6125 and
    the CA/B Forum profile accept them. Every other finding still fails the test."""
    return [
        f
        for f in lint_certificate(der)
        if not ("pkix.invalid_domain_name_syntax" in f and 'syntax: "*.' in f)
    ]


@dataclass
class ClientWorld:
    server: RunningServer
    dns: TestDNSServer
    database_url: str
    http_port: int
    root: Path
    # Steps later tests build on (an account, certificates), run once per world: pytest-xdist
    # may hand a later test to a worker that did not run the earlier one.
    steps: dict[str, Any] = field(default_factory=dict)

    def once(self: W, name: str, step: Callable[[W], Any]) -> Any:
        if name not in self.steps:
            self.steps[name] = step(self)
        return self.steps[name]

    def run_client(
        self, command: list[str], *, env: dict[str, str], check: bool
    ) -> subprocess.CompletedProcess[str]:
        """Run an ACME client; on failure (with `check`) its output and the server's log tail
        make the assertion message."""
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}\n--- server log ---\n{self.server.log()[-6000:]}"
            )
        return result

    def verify_full_chain(self, full_chain: Path, names: set[str]) -> x509.Certificate:
        """The leaf of a client's PEM bundle (leaf first, then its chain): openssl verify against
        the root, pkilint clean, and exactly these DNS names."""
        chain = x509.load_pem_x509_certificates(full_chain.read_bytes())
        assert len(chain) >= 2, "the issuing CA's certificate follows the leaf"
        # Beside the client's own files, not among them (certbot manages its live directory).
        with tempfile.TemporaryDirectory() as scratch:
            leaf_path, untrusted = Path(scratch) / "leaf.pem", Path(scratch) / "untrusted.pem"
            leaf_path.write_bytes(chain[0].public_bytes(Encoding.PEM))
            untrusted.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in chain[1:]))
            result = subprocess.run(
                [
                    "openssl",
                    "verify",
                    "-CAfile",
                    str(self.server.root_pem),
                    "-untrusted",
                    str(untrusted),
                    "-purpose",
                    "sslserver",
                    str(leaf_path),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        assert result.returncode == 0, result.stdout + result.stderr
        leaf = chain[0]
        assert lint_clean_allowing_wildcards(leaf.public_bytes(Encoding.DER)) == []
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.DNSName)) == names
        return leaf

    def certificate_row(self, certificate: x509.Certificate) -> CertificateRow:
        database = Database(self.database_url)
        try:
            with database.read() as session:
                row = session.scalars(
                    select(CertificateRow).where(
                        CertificateRow.serial == format(certificate.serial_number, "x")
                    )
                ).one()
                session.expunge(row)
                return row
        finally:
            database.dispose()


@contextmanager
def client_world(request: pytest.FixtureRequest, root: Path, world_class: type[W]) -> Iterator[W]:
    """A running server on the fixture's database (param "sqlite" or "postgresql"), validating
    http-01 on a free port and dns-01 through a loopback DNS server; /acme/eab/directory
    requires external account binding."""
    with module_database(request, root) as url:
        dns = TestDNSServer(["test"], root / "dns-records").start()
        http_port = free_port()
        extra = f"""
[frontends.acme]
terms_of_service = "https://pki.test/terms"
[frontends.acme.validation]
http_port = {http_port}
resolvers = ["127.0.0.1:{dns.port}"]
denied_networks = []
timeout = 5
[frontends.acme.directories.eab]
eab_required = true
"""
        (root / "server").mkdir()
        try:
            server = start_server(root / "server", url, extra=extra)
            try:
                yield world_class(server, dns, url, http_port, root)
            finally:
                server.stop()
        finally:
            dns.stop()
