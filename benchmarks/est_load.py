"""EST simpleenroll over HTTPS next to the core's in-process issuance rate, in one run.

Starts a real `privca serve` (SoftHSM token, EC P-256 issuing CA, --workers gunicorn workers),
creates one Basic credential, then for each concurrency level runs that many client threads,
each on its own keep-alive HTTPS connection, posting base64 P-256 CSRs to
/.well-known/est/simpleenroll until the window ends (bounded by --seconds and by --max-requests).
Before that, the core's own rate is measured in this process (CSR parse + core.issue, no HTTP)
against the same token and database. Prints requests/s, p50/p99 latency and the ratio of the
HTTP rate to the in-process rate. CSRs are made before timing starts.

Usage: python benchmarks/est_load.py [--seconds 5] [--levels 1,8,16] [--workers 2]
                                     [--database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PG_ADMIN = os.environ.get("PRIVCA_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
EST_CONFIG = """
[frontends.est]
[frontends.est.labels.default]
profile = "device"
auth = "basic"
"""


def make_csrs(count: int) -> list[bytes]:
    csrs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"dev{i}.bench.test"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        csrs.append(csr.public_bytes(Encoding.DER))
    return csrs


def in_process_rate(directory: Path, database_url: str, csrs: list[bytes], seconds: float) -> float:
    """core.issue() calls per second in this process, one thread (what HTTP is compared with).

    Its own data directory, token and database, made like the server's: issuing into the
    server's database would leave the server's job runner a backlog that skews the HTTP figures.
    """
    from ca.bootstrap import bootstrap
    from ca.config import load_config
    from ca.csr import parse_csr
    from ca.issuance_request import IssuanceRequest
    from tests.integration.server import free_port, write_server_config

    directory.mkdir()
    config_path = write_server_config(directory, database_url, free_port(), EST_CONFIG)
    core, _ = bootstrap(load_config(config_path, environ={}))
    try:

        def once(der: bytes) -> None:
            csr = parse_csr(der)
            core.issue(
                IssuanceRequest(
                    channel="admin",
                    requester="bench",
                    profile="device",
                    public_key=csr.public_key,
                    identifiers=csr.identifiers,
                    subject=csr.subject,
                    owner="bench",
                )
            )

        once(csrs[0])  # log in and warm the session
        done = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline and done < len(csrs):
            once(csrs[done])
            done += 1
        return done / (time.perf_counter() - started)
    finally:
        core.close()


def http_level(
    server: object,
    auth: str,
    csrs: list[bytes],
    concurrency: int,
    seconds: float,
    max_requests: int,
) -> tuple[float, list[float], int]:
    """(requests/s, latencies in s, errors) for `concurrency` keep-alive clients."""
    latencies: list[float] = []
    errors = [0]
    statuses: dict[object, int] = {}
    lock = threading.Lock()
    counter = [0]
    bodies = [base64.b64encode(der) for der in csrs]
    go = threading.Event()
    ready = threading.Semaphore(0)
    stop_at = [0.0]

    def connect() -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            server.port,  # type: ignore[attr-defined]
            context=server.ssl_context(),  # type: ignore[attr-defined]
            timeout=30,
        )
        connection.connect()
        return connection

    def client() -> None:
        mine: list[float] = []
        failed = 0
        ready.release()
        go.wait(120)
        # Connect only now: gthread completes the TLS handshake and then waits for the first
        # request on a worker thread, so idle pre-opened connections would starve the others.
        try:
            connection: http.client.HTTPSConnection | None = connect()
        except OSError as exc:
            connection = None
            with lock:
                name = f"connect: {exc}"
                statuses[name] = statuses.get(name, 0) + 1
        while connection is not None and time.perf_counter() < stop_at[0]:
            with lock:
                if counter[0] >= max_requests:
                    break
                index = counter[0]
                counter[0] += 1
            began = time.perf_counter()
            try:
                connection.request(
                    "POST",
                    "/.well-known/est/simpleenroll",
                    body=bodies[index % len(bodies)],
                    headers={"Authorization": auth, "Content-Type": "application/pkcs10"},
                )
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
                if not ok:
                    with lock:
                        statuses[response.status] = statuses.get(response.status, 0) + 1
            except (OSError, http.client.HTTPException) as exc:
                ok = False
                with lock:
                    name = type(exc).__name__
                    statuses[name] = statuses.get(name, 0) + 1
                connection.close()
                connection = connect()
            if ok:
                mine.append(time.perf_counter() - began)
            else:
                failed += 1
        if connection is None:
            failed += 1
        else:
            connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for _ in threads:
        ready.acquire(timeout=60)
    began = time.perf_counter()
    stop_at[0] = began + seconds
    go.set()
    for thread in threads:
        thread.join(seconds + 120)
    elapsed = time.perf_counter() - began
    if statuses:
        print(f"  (failures at concurrency {concurrency}: {statuses})", flush=True)
    return len(latencies) / elapsed, latencies, errors[0]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--levels", default="1,8,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    from sqlalchemy import create_engine, text

    from tests.integration.server import start_server

    with tempfile.TemporaryDirectory(prefix="privca-est-bench-") as tmp:
        directory = Path(tmp)
        pg_name = None
        if args.database == "postgresql":
            pg_name = f"privca_bench_{uuid.uuid4().hex[:12]}"
            admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{pg_name}"'))
            url = PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_name
        else:
            url = f"sqlite:///{directory / 'privca.db'}"
        count = min(args.max_requests, 4000)
        print(f"making {count} P-256 CSRs ...", flush=True)
        csrs = make_csrs(count)
        in_process_url = (
            f"sqlite:///{directory / 'in-process.db'}" if args.database == "sqlite" else url
        )
        rate = in_process_rate(directory / "in-process", in_process_url, csrs, args.seconds)
        print(f"in-process core.issue (1 thread): {rate:8.1f} issuances/s", flush=True)
        if args.database == "postgresql":
            # The server gets a fresh database of its own, for the same reason.
            pg_server = pg_name + "_http"
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{pg_server}"'))
            url = PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_server
        print(f"starting privca serve ({args.workers} workers, {args.database}) ...", flush=True)
        (directory / "server").mkdir()
        server = start_server(
            directory / "server",
            url,
            extra=EST_CONFIG,
            workers=args.workers,
            env={"PRIVCA_SERVER__RUN_JOBS": os.environ.get("BENCH_RUN_JOBS", "true")},
        )
        try:
            password = server.cli("est", "user", "create", "bench").stdout.strip()
            auth = "Basic " + base64.b64encode(f"bench:{password}".encode()).decode()
            print()
            print(
                f"{'concurrency':>11} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
                f"{'errors':>6}"
            )
            for level in levels:
                rps, latencies, errors = http_level(
                    server, auth, csrs, level, args.seconds, args.max_requests
                )
                p50 = percentile(latencies, 0.50) * 1000 if latencies else float("nan")
                p99 = percentile(latencies, 0.99) * 1000 if latencies else float("nan")
                print(
                    f"{level:>11} {rps:8.1f} {rps / rate:6.2f} {p50:7.1f} {p99:7.1f} {errors:>6}",
                    flush=True,
                )
            if latencies:
                print(
                    f"\n(mean latency at the last level: "
                    f"{statistics.mean(latencies) * 1000:.1f} ms)"
                )
        finally:
            server.stop()
            if pg_name is not None:
                with admin.connect() as connection:
                    for name in (pg_name, pg_name + "_http"):
                        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
