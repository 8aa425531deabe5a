"""A small authoritative DNS server on loopback for ACME tests (dnslib, UDP and TCP).

Answers A/AAAA for every name under its zones with 127.0.0.1 (so http-01 and tls-alpn-01 reach
the test's listeners), TXT records from memory and from files in `records_dir` (so a certbot
manual hook running as another process can publish dns-01 values by writing a file), and CNAMEs.
NXDOMAIN for names outside its zones.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from dnslib import AAAA, CNAME, QTYPE, RR, TXT, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSServer


def _free_udp_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the test DNS server")


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, server: TestDNSServer) -> None:
        self.server = server

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        reply.header.aa = 1
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        name, hops = qname, 0
        while name in self.server.cnames and hops < 8:
            target = self.server.cnames[name]
            cname = CNAME(target + ".")
            reply.add_answer(RR(DNSLabel(name + "."), QTYPE.CNAME, rdata=cname, ttl=0))
            if not self.server.chase_cnames:
                return reply
            name, hops = target, hops + 1
        if not any(name == z or name.endswith("." + z) for z in self.server.zones):
            if hops == 0:
                reply.header.rcode = 3  # NXDOMAIN
            return reply
        label = DNSLabel(name + ".")
        if qtype == "A" and not name.startswith("_acme-challenge."):
            reply.add_answer(RR(label, QTYPE.A, rdata=A(self.server.address), ttl=0))
        elif qtype == "AAAA" and self.server.address6 and not name.startswith("_acme-challenge."):
            reply.add_answer(RR(label, QTYPE.AAAA, rdata=AAAA(self.server.address6), ttl=0))
        elif qtype == "TXT":
            for value in self.server.txt_values(name):
                reply.add_answer(RR(label, QTYPE.TXT, rdata=TXT(value), ttl=0))
        return reply


class TestDNSServer:
    """Start with `start()`, stop with `stop()`; `port` is where privca's resolver must point."""

    __test__ = False  # not a pytest test class

    def __init__(self, zones: list[str], records_dir: Path, address: str = "127.0.0.1") -> None:
        self.zones = [z.lower().rstrip(".") for z in zones]
        self.records_dir = records_dir
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.address6: str | None = None
        self.txt: dict[str, list[str]] = {}
        self.cnames: dict[str, str] = {}
        self.chase_cnames = True
        self._lock = threading.Lock()
        self.port = _free_udp_tcp_port()
        resolver = _Resolver(self)
        self._servers = [
            DNSServer(resolver, port=self.port, address="127.0.0.1", tcp=False, logger=_Quiet()),
            DNSServer(resolver, port=self.port, address="127.0.0.1", tcp=True, logger=_Quiet()),
        ]

    def start(self) -> TestDNSServer:
        for server in self._servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

    def set_txt(self, name: str, values: list[str]) -> None:
        with self._lock:
            self.txt[name.lower().rstrip(".")] = list(values)

    def txt_values(self, name: str) -> list[str]:
        with self._lock:
            values = list(self.txt.get(name, []))
        # Files named "<name>.<anything>.txt" hold one value each (written by certbot hooks).
        for path in sorted(self.records_dir.glob(f"{name}.*.txt")):
            values.append(path.read_text().strip())
        return values


class _Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None
