"""ACME load: whole orders per second against privca and Pebble, with the `acme` library.

Each client thread has its own account and runs complete flows: newOrder for a fresh name
(o<N>.bench.test, resolved to 127.0.0.1 by a loopback DNS server both CAs are pointed at),
http-01 answered by an in-process HTTP server, finalize with a P-256 CSR, download. Reported per
concurrency (1, 4, 16): orders/s, p50/p99 order latency, the HTTP requests an order took, and
the servers' own CPU seconds per order read from /proc (the privca process tree, and separately
the PostgreSQL backends serving the benchmark database plus the WAL writers, since Pebble keeps
everything in memory), then privca/Pebble ratios. The load client keeps one TLS connection per
client thread alive. Each round also measures each server's request floor: its CPU per GET of
its directory, the cheapest request it serves, times the requests an order takes. With
--rounds N both servers stay up and the rounds alternate privca and Pebble; the table shows the
medians over the rounds (this machine is shared, so single runs wander).

    python benchmarks/acme_load.py [--orders 15,40,96] [--time-limit 60] [--rounds 1]
        [--database-url URL] [--skip-pebble] [--workers 2] [--threads 8]

privca runs as `privca serve` (SoftHSM token, HSM signing) on PostgreSQL (a fresh database is
created and dropped unless --database-url is given). Pebble runs with PEBBLE_VA_NOSLEEP=1 and
PEBBLE_WFE_NONCEREJECT=0 (Debian package `pebble`). Every loop is bounded by count and time.
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import josepy
from acme import challenges, client, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks.proc_cpu import TICKS, all_stats, tree_cpu
from tests.integration.dns_server import TestDNSServer
from tests.integration.server import free_port, start_server
from tests.support.software_ca import self_signed_ca

POLL = 0.02
PG_ADMIN = "postgresql+psycopg://root@127.0.0.1:5432/test"


# --- the http-01 responder ------------------------------------------------------------------


class Responder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int) -> None:
        self.answers: dict[str, bytes] = {}
        answers = self.answers

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = answers.get(self.path.rsplit("/", 1)[-1], b"")
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


# --- one client thread ----------------------------------------------------------------------


@dataclass
class Worker:
    directory_url: str
    ca_bundle: str
    responder: Responder
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests_per_order: list[int] = field(default_factory=list)
    sent: int = 0  # HTTP requests this client has made

    def __post_init__(self) -> None:
        key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        self.net = client.ClientNetwork(key, alg=josepy.ES256, user_agent="privca-bench")
        self.net.verify_ssl = self.ca_bundle  # type: ignore[assignment]  # requests takes a path
        self.net.session.hooks["response"].append(self._count)
        directory = client.ClientV2.get_directory(self.directory_url, self.net)
        self.acme = client.ClientV2(directory, self.net)
        self.acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))

    def _count(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.sent += 1

    def one_order(self, name: str, deadline: float) -> None:
        started = time.perf_counter()
        sent_before = self.sent
        cert_key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(cert_key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        order = self.acme.new_order(csr)
        for authz in order.authorizations:
            challenge = next(
                c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)
            )
            response, validation = challenge.chall.response_and_validation(self.net.key)
            self.responder.answers[challenge.chall.encode("token")] = validation.encode()
            self.acme.answer_challenge(challenge, response)
            while True:
                authz, _ = self.acme.poll(authz)
                if authz.body.status == messages.STATUS_VALID:
                    break
                if authz.body.status == messages.STATUS_INVALID or time.monotonic() > deadline:
                    raise RuntimeError(f"authorization {authz.body.status}")
                time.sleep(POLL)
        order = self.acme.begin_finalization(order)
        body = order.body
        while body.status != messages.STATUS_VALID:
            if body.status == messages.STATUS_INVALID or time.monotonic() > deadline:
                raise RuntimeError(f"order {body.status}")
            time.sleep(POLL)
            body = messages.Order.from_json(self.acme._post_as_get(order.uri).json())
        pem = self.acme._post_as_get(body.certificate).text
        assert "BEGIN CERTIFICATE" in pem
        self.latencies.append(time.perf_counter() - started)
        self.requests_per_order.append(self.sent - sent_before)


def run_level(
    directory_url: str,
    ca_bundle: str,
    responder: Responder,
    concurrency: int,
    orders: int,
    time_limit: float,
    tag: str,
    cpu: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    workers = [Worker(directory_url, ca_bundle, responder) for _ in range(concurrency)]
    counter = iter(range(orders))
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def loop(worker: Worker) -> None:
        while time.monotonic() < deadline:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            name = f"o{index}-{tag}-{uuid.uuid4().hex[:8]}.bench.test"
            try:
                worker.one_order(name, deadline + 30)
            except Exception as exc:  # a failed order is counted, not fatal
                worker.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    cpu_before = cpu()
    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(time_limit + 120)
    elapsed = time.perf_counter() - started
    cpu_after = cpu()
    latencies = sorted(x for w in workers for x in w.latencies)
    errors = [e for w in workers for e in w.errors]
    sent = [n for w in workers for n in w.requests_per_order]
    done = len(latencies)
    result = {
        "concurrency": concurrency,
        "orders": done,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(elapsed, 2),
        "orders_per_second": round(done / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "requests_per_order": round(statistics.mean(sent), 2) if sent else None,
    }
    for name in cpu_before:
        used = cpu_after[name] - cpu_before[name]
        result[f"{name}_cpu_ms_per_order"] = round(used * 1000 / done, 2) if done else None
    return result


def request_floor(
    url: str,
    ca_bundle: str,
    cpu: Callable[[], float],
    requests: int = 2000,
    threads: int = 4,
    time_limit: float = 20.0,
) -> float | None:
    """The server's CPU milliseconds per GET of `url` (its ACME directory: no JWS, no database,
    the cheapest request it serves) over `threads` keep-alive connections: what its HTTP stack
    costs per request before any ACME work. Bounded by count and by time."""
    import requests as http_requests

    counter = iter(range(requests))
    lock = threading.Lock()
    done = [0] * threads
    failures: list[str] = []
    ready = threading.Barrier(threads + 1)
    deadline = time.monotonic() + time_limit

    def loop(thread: int) -> None:
        try:
            with http_requests.Session() as session:
                # verify= on each request: a session's own setting loses to REQUESTS_CA_BUNDLE.
                session.get(url, verify=ca_bundle).raise_for_status()  # handshake before timing
                ready.wait(time_limit)
                while time.monotonic() < deadline:
                    with lock:
                        if next(counter, None) is None:
                            return
                    session.get(url, verify=ca_bundle).raise_for_status()
                    done[thread] += 1
        except Exception as exc:  # reported, and the measurement is dropped
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
            ready.abort()

    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    try:
        ready.wait(time_limit)
        before = cpu()
    except threading.BrokenBarrierError:
        before = None
    for worker in workers:
        worker.join(time_limit + 30)
    if before is None or failures:
        print(f"request floor of {url} not measured: {failures[:1]}", file=sys.stderr)
        return None
    used = cpu() - before
    total = sum(done)
    return round(used * 1000 / total, 3) if total else None


def _percentile(values: list[float], fraction: float) -> float:
    index = min(len(values) - 1, max(0, round(fraction * (len(values) - 1))))
    return values[index]


# --- CPU from /proc -------------------------------------------------------------------------


# Shared PostgreSQL processes that work for every database (WAL and buffer writes).
_PG_AUXILIARY = ("walwriter", "checkpointer", "background writer")


class PostgresCPU:
    """CPU seconds of the backends connected to one database plus the WAL and buffer writers.

    Other databases' backends (other test runs on this machine) are left out, and so is the
    postmaster's count of exited children. A connection pool closes overflow connections, so
    backends come and go under load: a sampler thread remembers each backend's last reading,
    and a backend's CPU after its last sample (at most `interval`) is missed, so this errs low.
    """

    def __init__(self, database: str, interval: float = 0.1) -> None:
        self.database = database
        self.seen: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sample()

    def sample(self) -> float:
        readings = {}
        for pid, (_, name, _) in all_stats().items():
            if not name.startswith("postgres"):
                continue
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # "postgres: 15/main: root privca_bench_x 127.0.0.1(5432) idle" for a backend.
            words = title.split()
            ours = len(words) > 3 and words[3] == self.database
            if ours or any(aux in title for aux in _PG_AUXILIARY):
                readings[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        with self._lock:
            self.seen.update(readings)
            return sum(self.seen.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- the two servers ------------------------------------------------------------------------


def start_privca(
    root: Path, database_url: str, http_port: int, dns_port: int, workers: int, threads: int
) -> Any:
    extra = f"""
[frontends.acme.validation]
http_port = {http_port}
resolvers = ["127.0.0.1:{dns_port}"]
denied_networks = []
workers = 8
[frontends.acme.rate_limits]
new_orders_per_account = false
certificates_per_name = false
failed_validations = false
new_accounts_per_ip = false
"""
    return start_server(
        root,
        database_url,
        extra=extra,
        workers=workers,
        env={"PRIVCA_SERVER__THREADS": str(threads)},
    )


def start_pebble(
    root: Path, http_port: int, dns_port: int
) -> tuple[subprocess.Popen[bytes], str, str]:
    certificate, key = self_signed_ca(
        "pebble bench",
        days=1,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    cert_path, key_path = root / "pebble.crt", root / "pebble.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    port = free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{free_port()}",
            "certificate": str(cert_path),
            "privateKey": str(key_path),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (root / "pebble.json").write_text(json.dumps(config))
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
    log = open(root / "pebble.log", "wb")
    process = subprocess.Popen(
        [
            shutil.which("pebble") or "pebble",
            "-config",
            str(root / "pebble.json"),
            "-dnsserver",
            f"127.0.0.1:{dns_port}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError("pebble did not start")
    return process, f"https://127.0.0.1:{port}/dir", str(cert_path)


def create_database() -> tuple[str, Callable[[], None]]:
    from sqlalchemy import create_engine, text

    from ca.storage import Database

    name = f"privca_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    database = Database(url)
    database.upgrade()
    database.dispose()

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", default="15,40,96", help="orders per level (c=1,4,16)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per level")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds (privca then Pebble); medians are reported"
    )
    parser.add_argument("--database-url")
    parser.add_argument("--skip-pebble", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    counts = [int(n) for n in args.orders.split(",")]
    root = Path(tempfile.mkdtemp(prefix="acme-bench-"))
    dns = TestDNSServer(["bench.test"], root / "dns").start()
    http_port = free_port()
    responder = Responder(http_port)
    drop: Callable[[], None] = lambda: None  # noqa: E731
    url = args.database_url
    if url is None:
        url, drop = create_database()
    # rounds[server] = one list of level results per round
    rounds: dict[str, list[list[dict[str, Any]]]] = {"privca": []}
    # floors[server] = the server's CPU ms per directory GET, one per round
    floors: dict[str, list[float | None]] = {"privca": []}
    try:
        (root / "privca").mkdir()
        server = start_privca(root / "privca", url, http_port, dns.port, args.workers, args.threads)
        pebble = None
        postgres = PostgresCPU(url.rsplit("/", 1)[1].split("?", 1)[0])
        try:
            pid = server.process.pid
            privca_cpu = lambda: {"privca": tree_cpu(pid), "postgres": postgres.sample()}  # noqa: E731
            if not args.skip_pebble:
                # Both servers stay up for every round, so the rounds interleave the two and a
                # change in the machine's load between rounds shows in both.
                pebble, directory, bundle = start_pebble(root, http_port, dns.port)
                pebble_pid = pebble.pid
                rounds["pebble"] = []
                floors["pebble"] = []
            for round_number in range(args.rounds):
                floors["privca"].append(
                    request_floor(
                        server.base_url + "/acme/directory",
                        str(server.root_pem),
                        lambda: tree_cpu(pid),
                    )
                )
                rounds["privca"].append(
                    [
                        run_level(
                            server.base_url + "/acme/directory",
                            str(server.root_pem),
                            responder,
                            c,
                            n,
                            args.time_limit,
                            f"p{c}r{round_number}",
                            privca_cpu,
                        )
                        for c, n in zip(levels, counts, strict=True)
                    ]
                )
                if pebble is not None:
                    pebble_cpu = lambda: {"pebble": tree_cpu(pebble_pid)}  # noqa: E731
                    floors["pebble"].append(
                        request_floor(directory, bundle, lambda: tree_cpu(pebble_pid))
                    )
                    rounds["pebble"].append(
                        [
                            run_level(
                                directory,
                                bundle,
                                responder,
                                c,
                                n,
                                args.time_limit,
                                f"b{c}r{round_number}",
                                pebble_cpu,
                            )
                            for c, n in zip(levels, counts, strict=True)
                        ]
                    )
        finally:
            postgres.stop()
            server.stop()
            if pebble is not None:
                pebble.terminate()
                pebble.wait(10)
    finally:
        responder.shutdown()
        dns.stop()
        drop()
    print(json.dumps({"levels": rounds, "request_floor_ms": floors}, indent=2))
    summary = {name: _medians(per_round) for name, per_round in rounds.items()}
    print(f"\nmedians of {args.rounds} round(s); a level with failed orders is marked !")
    if "pebble" in summary:
        print(
            "concurrency  privca o/s  pebble o/s  ratio   "
            "privca cpu/order  (+pg)  pebble cpu/order  ratio"
        )
        for mine, theirs in zip(summary["privca"], summary["pebble"], strict=True):
            ratio = (
                mine["orders_per_second"] / theirs["orders_per_second"]
                if theirs["orders_per_second"]
                else 0
            )
            mine_cpu = mine["privca_cpu_ms_per_order"] or 0
            pg_cpu = mine["postgres_cpu_ms_per_order"] or 0
            theirs_cpu = theirs["pebble_cpu_ms_per_order"] or 0
            flags = ("!" if mine["errors"] else " ") + ("!" if theirs["errors"] else " ")
            print(
                f"{mine['concurrency']:>11}  {mine['orders_per_second']:>10}  "
                f"{theirs['orders_per_second']:>10}  {ratio:5.2f}x  {mine_cpu:>10} ms"
                f"  {pg_cpu:>6} ms  {theirs_cpu:>10} ms  "
                f"{(mine_cpu / theirs_cpu if theirs_cpu else 0):5.2f}x {flags}"
            )
    else:
        print("concurrency  privca o/s  p50 ms  p99 ms  privca cpu/order  (+pg)")
        for mine in summary["privca"]:
            print(
                f"{mine['concurrency']:>11}  {mine['orders_per_second']:>10}  "
                f"{mine['p50_ms']:>6}  {mine['p99_ms']:>6}  "
                f"{mine['privca_cpu_ms_per_order']:>13} ms  {mine['postgres_cpu_ms_per_order']} ms"
                f" {'!' if mine['errors'] else ''}"
            )
    _print_floors(floors, summary)
    return 0


def _print_floors(
    floors: dict[str, list[float | None]], summary: dict[str, list[dict[str, Any]]]
) -> None:
    """What each server's HTTP stack alone costs per order: its CPU per directory GET times the
    requests an order takes, next to what a whole order cost Pebble."""
    print("\nrequest floor: server CPU per GET of the directory (no JWS, no database)")
    medians = {}
    for name, values in floors.items():
        known = [v for v in values if v is not None]
        medians[name] = statistics.median(known) if known else None
        print(f"  {name:<7} {medians[name]} ms per request")
    if medians.get("pebble"):
        print(f"  ratio   {medians['privca'] / medians['pebble']:.1f}x")
    for index, mine in enumerate(summary["privca"]):
        per_order = mine.get("requests_per_order")
        if not per_order or medians["privca"] is None:
            continue
        floor = per_order * medians["privca"]
        line = (
            f"  c={mine['concurrency']:<3} {per_order} requests per order: privca's HTTP floor is "
            f"{floor:.2f} ms per order"
        )
        if "pebble" in summary:
            theirs = summary["pebble"][index].get("pebble_cpu_ms_per_order")
            if theirs:
                line += f", {floor / theirs:.2f} of Pebble's whole order ({theirs} ms)"
        print(line)


def _medians(per_round: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per level: the median of each figure over the rounds, and the errors summed."""
    summary = []
    for results in zip(*per_round, strict=True):
        level: dict[str, Any] = {"concurrency": results[0]["concurrency"]}
        for key, value in results[0].items():
            if key == "errors":
                level[key] = sum(r[key] for r in results)
            elif key.endswith(("_per_second", "_ms", "_per_order")) and value is not None:
                values = [r[key] for r in results if r[key] is not None]
                level[key] = round(statistics.median(values), 2)
            elif key not in level:
                level[key] = value
        summary.append(level)
    return summary


if __name__ == "__main__":
    sys.exit(main())
