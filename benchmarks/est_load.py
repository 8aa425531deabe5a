"""EST simpleenroll over HTTPS next to the core's in-process issuance rate, in one run.

Starts a real `privca serve` (SoftHSM token, EC P-256 issuing CA, --workers gunicorn workers of
--threads threads), creates one Basic credential, then for each concurrency level keeps that many
keep-alive HTTPS connections busy posting base64 P-256 CSRs to /.well-known/est/simpleenroll for
--seconds. Before that, the core's own rate is measured in this process (CSR parse + core.issue,
one thread, no HTTP) against its own token and database. Prints requests/s, p50/p99 latency, the
ratio of the HTTP rate to the in-process rate, and the CPU the load client itself used.

The load client is wrk (--client wrk, the default when it is installed): a C client that spends
a few per cent of a core, so on a 2-core machine the server keeps nearly both. The Python client
(--client python: one thread per connection, http.client) needs about as much CPU per request as
the server's HTTP layer and competes with it for the same cores, so it understates the server;
it stays for machines without wrk. Each level starts with a --warmup run at the same concurrency
that is not counted: it opens the connections and lets each worker verify the Basic credential
once (argon2id, by design tens of milliseconds), which is a credential's first-request cost, not
the steady state. That cold cost is printed on its own line.

Usage: python benchmarks/est_load.py [--seconds 5] [--levels 1,8,16] [--workers 2] [--threads 4]
                                     [--client wrk|python] [--warmup 1]
                                     [--database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.material import p256_csrs

PG_ADMIN = os.environ.get("PRIVCA_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
EST_CONFIG = """
[frontends.est]
[frontends.est.labels.default]
profile = "device"
auth = "basic"
"""


WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/pkcs10"}
local counter = 0
init = function(args) headers["Authorization"] = args[1] end
request = function()
  counter = counter + 1
  return wrk.format("POST", "/.well-known/est/simpleenroll", headers,
    bodies[(counter %% #bodies) + 1])
end
"""


@dataclass(frozen=True)
class Rate:
    per_second: float
    cpu_seconds_each: float  # CPU of the issuing thread (or of the server's processes) per call


def in_process_rates(
    directory: Path, database_url: str, csrs: list[bytes], seconds: float
) -> tuple[Rate, Rate]:
    """core.issue() calls per second in this process, one thread: (bare core, as served),
    each with the thread's CPU time per issuance (SQLite's work included, PostgreSQL's not).

    "Bare" is the core alone. "As served" is the same core after the app factory has mounted
    the front ends, as in every `privca serve` worker: their issuance listeners (OCSP
    pre-signing enqueues a job in the issuance transaction) then run inside core.issue(). The
    jobs themselves are not run here; the server runs them in its job-runner thread.
    Its own data directory, token and database, made like the server's: issuing into the
    server's database would leave the server's job runner a backlog that skews the HTTP figures.
    """
    from ca.bootstrap import bootstrap
    from ca.config import load_config
    from ca.csr import parse_csr
    from ca.issuance_request import IssuanceRequest
    from ca.web.app import create_app
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

        def rate(batch: list[bytes]) -> Rate:
            once(batch[0])  # log in and warm the session
            done = 0
            started, cpu_started = time.perf_counter(), time.thread_time()
            deadline = started + seconds
            while time.perf_counter() < deadline and done + 1 < len(batch):
                once(batch[done + 1])
                done += 1
            cpu = time.thread_time() - cpu_started
            return Rate(done / (time.perf_counter() - started), cpu / max(done, 1))

        half = len(csrs) // 2
        bare = rate(csrs[:half])
        create_app(core=core)
        return bare, rate(csrs[half:])
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


def client_cpu_seconds() -> float:
    """CPU time of this process and its finished children (wrk), user plus system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def wrk_level(
    url: str, script: Path, auth: str, concurrency: int, seconds: float
) -> tuple[float, float, float, int]:
    """(requests/s, p50 s, p99 s, errors) from one wrk run: one wrk thread, `concurrency`
    keep-alive connections, each with one request in flight."""
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            auth,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 90,
        check=True,
    )
    out = result.stdout
    latency = {
        match.group(1): float(match.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[match.group(3)]
        for match in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)
    }
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    # Requests/sec would count refusals too: only answered enrollments count.
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    assert done is not None, out
    elapsed = float(done.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    rate = max(0, int(done.group(1)) - errors) / elapsed
    return rate, latency.get("50", float("nan")), latency.get("99", float("nan")), errors


def cold_verification(server: object, csr: bytes) -> tuple[float, float]:
    """(first, second) latency in s of one request with a fresh credential on one connection.

    The first pays the argon2id verification in whichever worker takes the connection; the
    second, on the same connection, finds it remembered.
    """
    password = server.cli("est", "user", "create", "bench-cold").stdout.strip()  # type: ignore[attr-defined]
    auth = "Basic " + base64.b64encode(f"bench-cold:{password}".encode()).decode()
    connection = http.client.HTTPSConnection(
        "127.0.0.1",
        server.port,  # type: ignore[attr-defined]
        context=server.ssl_context(),  # type: ignore[attr-defined]
        timeout=30,
    )
    connection.connect()
    times = []
    try:
        for _ in range(2):
            began = time.perf_counter()
            connection.request(
                "POST",
                "/.well-known/est/simpleenroll",
                body=base64.b64encode(csr),
                headers={"Authorization": auth, "Content-Type": "application/pkcs10"},
            )
            response = connection.getresponse()
            response.read()
            times.append(time.perf_counter() - began)
            if response.status != 200:
                raise SystemExit(f"cold request failed: {response.status}")
    finally:
        connection.close()
    return times[0], times[1]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--levels", default="1,8,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="server.threads (default 4)")
    parser.add_argument("--max-requests", type=int, default=20_000, help="python client only")
    parser.add_argument("--warmup", type=float, default=1.0, help="uncounted seconds per level")
    parser.add_argument(
        "--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python"
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--recheck", type=int, default=0, help="frontends.est.basic_recheck_seconds (default 0)"
    )
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    pg_names: list[str] = []

    def fresh_database(directory: Path, name: str) -> str:
        """A new empty database: the server and each in-process run get their own, since
        issuing into the server's would leave its job runner a backlog that skews its figures."""
        if args.database == "sqlite":
            return f"sqlite:///{directory / (name + '.db')}"
        pg_name = f"privca_bench_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{pg_name}"'))
        pg_names.append(pg_name)
        return PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_name

    try:
        with tempfile.TemporaryDirectory(prefix="privca-est-bench-") as tmp:
            directory = Path(tmp)
            count = min(args.max_requests, 6000)
            print(f"making {count} P-256 CSRs ...", flush=True)
            csrs = p256_csrs(count, "dev{}.bench.test")
            bodies = directory / "csrs.b64"
            bodies.write_bytes(b"".join(base64.b64encode(der) + b"\n" for der in csrs))
            script = directory / "simpleenroll.lua"
            script.write_text(WRK_SCRIPT % {"bodies": bodies})

            before = in_process_rates(
                directory / "in-process",
                fresh_database(directory, "in-process"),
                csrs,
                args.seconds,
            )
            print(
                f"in-process core.issue (1 thread): {before[0].per_second:.1f}/s bare core, "
                f"{before[1].per_second:.1f}/s as served (with the front ends' issuance "
                f"listeners); CPU {before[0].cpu_seconds_each * 1000:.1f} and "
                f"{before[1].cpu_seconds_each * 1000:.1f} ms each",
                flush=True,
            )
            results, cold = http_levels(
                args, directory, fresh_database(directory, "server"), csrs, script, levels
            )
            # Measured again after the HTTP levels: on a shared machine the background load
            # drifts, so the ratios that count are against the mean of both measurements.
            after = in_process_rates(
                directory / "in-process-after",
                fresh_database(directory, "in-process-after"),
                csrs,
                args.seconds,
            )
            bare = (before[0].per_second + after[0].per_second) / 2
            served = (before[1].per_second + after[1].per_second) / 2
            served_cpu = (before[1].cpu_seconds_each + after[1].cpu_seconds_each) / 2
            print(
                f"\nin-process core.issue again: {after[0].per_second:.1f}/s bare, "
                f"{after[1].per_second:.1f}/s as served; CPU "
                f"{after[1].cpu_seconds_each * 1000:.1f} ms each as served"
            )
            print(
                f"reference (mean of both): {bare:.1f}/s bare, {served:.1f}/s as served, "
                f"{served_cpu * 1000:.1f} ms CPU each as served\n"
            )
            # CPU per request is steadier than rates on a shared machine: the server's CPU per
            # enrollment over the in-process CPU per issuance is what EST, HTTP and TLS (and the
            # server's background jobs) add to the issuance itself.
            print(
                f"{'concurrency':>11} {'req/s':>8} {'/ bare':>7} {'/ served':>8} "
                f"{'server CPU / in-process CPU':>28}"
            )
            for level, rate in results:
                print(
                    f"{level:>11} {rate.per_second:8.1f} {rate.per_second / bare:7.2f} "
                    f"{rate.per_second / served:8.2f} "
                    f"{rate.cpu_seconds_each / served_cpu:>28.2f}"
                )
            print(
                f"\na fresh credential's first request: {cold[0] * 1000:.1f} ms "
                f"(argon2id in the worker), its second: {cold[1] * 1000:.1f} ms"
            )
    finally:
        with admin.connect() as connection:
            for name in pg_names:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


def http_levels(
    args: argparse.Namespace,
    directory: Path,
    url: str,
    csrs: list[bytes],
    script: Path,
    levels: list[int],
) -> tuple[list[tuple[int, Rate]], tuple[float, float]]:
    """Run `privca serve` and every level; ([(concurrency, rate and the server's CPU per
    request)], cold latencies)."""
    from benchmarks.proc_cpu import tree_cpu
    from tests.integration.server import start_server

    env = {"PRIVCA_SERVER__RUN_JOBS": os.environ.get("BENCH_RUN_JOBS", "true")}
    if args.threads is not None:
        env["PRIVCA_SERVER__THREADS"] = str(args.threads)
    print(
        f"starting privca serve ({args.workers} workers, {args.threads or 'default'} threads, "
        f"{args.database}, basic_recheck_seconds {args.recheck}); client: {args.client} ...",
        flush=True,
    )
    (directory / "server").mkdir()
    extra = EST_CONFIG
    if args.recheck:
        extra = extra.replace(
            "[frontends.est]\n", f"[frontends.est]\nbasic_recheck_seconds = {args.recheck}\n"
        )
    server = start_server(directory / "server", url, extra=extra, workers=args.workers, env=env)
    results: list[tuple[int, Rate]] = []
    try:
        password = server.cli("est", "user", "create", "bench").stdout.strip()
        auth = "Basic " + base64.b64encode(f"bench:{password}".encode()).decode()
        print()
        print(
            f"{'concurrency':>11} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'errors':>6} {'client CPU':>10} {'server CPU/req':>14}"
        )
        for level in levels:
            if args.warmup > 0:
                run_level(args, server, auth, script, csrs, level, args.warmup)
            server_before = tree_cpu(server.process.pid)
            cpu_before, began = client_cpu_seconds(), time.perf_counter()
            rps, p50, p99, errors = run_level(args, server, auth, script, csrs, level)
            elapsed = time.perf_counter() - began
            client_share = (client_cpu_seconds() - cpu_before) / elapsed
            server_each = (tree_cpu(server.process.pid) - server_before) / max(rps * elapsed, 1)
            results.append((level, Rate(rps, server_each)))
            print(
                f"{level:>11} {rps:8.1f} {p50 * 1000:7.1f} "
                f"{p99 * 1000:7.1f} {errors:>6} {client_share:>9.0%} "
                f"{server_each * 1000:>11.1f} ms",
                flush=True,
            )
        cold = cold_verification(server, csrs[-1])
    finally:
        server.stop()
    return results, cold


def run_level(
    args: argparse.Namespace,
    server: object,
    auth: str,
    script: Path,
    csrs: list[bytes],
    concurrency: int,
    seconds: float | None = None,
) -> tuple[float, float, float, int]:
    """(requests/s, p50 s, p99 s, errors) at one concurrency with the chosen client."""
    seconds = args.seconds if seconds is None else seconds
    if args.client == "wrk":
        url = server.base_url  # type: ignore[attr-defined]
        return wrk_level(url, script, auth, concurrency, seconds)
    rps, latencies, errors = http_level(server, auth, csrs, concurrency, seconds, args.max_requests)
    if not latencies:
        return rps, float("nan"), float("nan"), errors
    return rps, percentile(latencies, 0.50), percentile(latencies, 0.99), errors


if __name__ == "__main__":
    sys.exit(main())
