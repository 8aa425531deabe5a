"""Core issuance rate next to the raw token signature rate, in one run.

For an ECDSA P-256 and an RSA-2048 issuing CA, with 1 and 2 processes, on SQLite and PostgreSQL:
  raw   = HSMSigner.sign() calls per second on the issuing key (SoftHSM through python-pkcs11)
  issue = complete issuances per second through the core: CSR in, parse and verify, policy,
          serial reserved (pending row committed), token signature, row issued + audit entry
          committed, certificate out
  floor = the same with only the work every issuance must do (CSR parsed and its signature
          checked, certificate built, TBS signed in the token, signature checked, DER
          assembled): no policy, serial reservation, storage or audit
and the ratios issue/raw and floor/raw (the ceiling: no issuance through the core can do better).
Issuance runs on --threads threads per process (a served node has concurrent requests). Each
figure is the median of --repeat timed windows of --seconds each. CSRs are made before timing
starts. Every loop is bounded by time and by count.

Usage: python benchmarks/core_issuance.py [--seconds 3] [--repeat 3] [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.material import p256_csrs

PG_ADMIN = os.environ.get("PRIVCA_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")
MAX_OPS_PER_WINDOW = 200_000


def write_config(directory: Path, database_url: str) -> Path:
    path = directory / "privca.toml"
    path.write_text(f"""
data_dir = "{directory / "data"}"
[database]
url = "{database_url}"
[[issuers]]
name = "issuing-ec"
subject = "CN=Bench EC"
key_type = "ec-p256"
[[issuers]]
name = "issuing-rsa"
subject = "CN=Bench RSA"
key_type = "rsa-2048"
[profiles.ec]
issuer = "issuing-ec"
[profiles.rsa]
issuer = "issuing-rsa"
""")
    return path


def _request(csr_der: bytes, profile: str) -> Any:
    """The CSR parsed (its signature checked) and turned into the core's request, as the admin
    API does."""
    from ca.csr import parse_csr
    from ca.issuance_request import IssuanceRequest

    csr = parse_csr(csr_der)
    return IssuanceRequest(
        channel="admin",
        requester="bench",
        profile=profile,
        public_key=csr.public_key,
        identifiers=csr.identifiers,
        subject=csr.subject,
    )


def _floor_issue(core: Any, profile_name: str, csr_der: bytes) -> bytes:
    """The work every issuance must do, and nothing else: the CSR parsed and its signature
    checked, the certificate built from the profile and run through the builder for its TBS,
    the TBS signed in the token, the token's signature checked, the certificate assembled and
    loaded. The pipeline's own functions, without policy, serial reservation, storage or
    audit: a ceiling no issuance through the core can pass."""
    from cryptography import x509

    from ca.issuance import build_certificate
    from ca.issuers import CLOCK_SKEW, new_serial
    from ca.signing import assemble_certificate, prepare_certificate
    from hsm.public_key import signature_valid

    request = _request(csr_der, profile_name)
    profile = core.profiles[profile_name]
    issuer = core.issuers[profile.issuer]
    now = core.now()
    not_before = now - CLOCK_SKEW
    not_after = not_before + timedelta(days=profile.validity_days)
    builder = build_certificate(core, issuer, profile, request, new_serial(), not_before, not_after)
    prepared = prepare_certificate(builder, issuer.signer)
    signature = core.sign(issuer, prepared.tbs)
    if not signature_valid(
        issuer.certificate.public_key(), issuer.signer.algorithm, signature, prepared.tbs
    ):
        raise RuntimeError("the token returned an invalid signature")
    der = assemble_certificate(prepared, signature)
    x509.load_der_x509_certificate(der)
    return der


def _worker(
    config_path: str,
    mode: str,
    issuer: str,
    seconds: float,
    csrs: list[bytes],
    start: float,
    threads: int,
    results: multiprocessing.Queue,
) -> None:
    from ca.config import load_config
    from ca.core import CACore

    config = load_config(config_path)
    core = CACore.from_config(config)
    signer = core.issuers[issuer].signer
    profile = "ec" if issuer == "issuing-ec" else "rsa"
    payload = secrets.token_bytes(512)
    signer.sign(payload)  # warm the session

    def issue_one(csr_der: bytes) -> None:
        core.issue(_request(csr_der, profile))

    one = {"issue": issue_one, "floor": lambda der: _floor_issue(core, profile, der)}.get(mode)
    if one is not None:
        one(csrs[0])  # warm the database pool and caches
    while time.time() < start:
        time.sleep(0.001)
    deadline = time.perf_counter() + seconds
    if one is None:  # raw
        done = 0
        while time.perf_counter() < deadline and done < MAX_OPS_PER_WINDOW:
            signer.sign(payload)
            done += 1
        results.put(done)
        core.close()
        return
    # Issuance runs on `threads` threads per process, as a gunicorn gthread worker serves
    # concurrent requests: their transactions share commits (ca.storage.group_commit).
    counts = [0] * threads

    def run(thread: int) -> None:
        position = thread
        while time.perf_counter() < deadline and counts[thread] < MAX_OPS_PER_WINDOW:
            one(csrs[position % len(csrs)])
            counts[thread] += 1
            position += threads

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 60)
    done = sum(counts)
    results.put(done)
    core.close()


def measure(
    config_path: Path,
    mode: str,
    issuer: str,
    processes: int,
    seconds: float,
    csrs: list[bytes],
    threads: int = 1,
) -> float:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    start = time.time() + 2.0  # let every process load and log in first
    workers = [
        context.Process(
            target=_worker,
            args=(
                str(config_path),
                mode,
                issuer,
                seconds,
                csrs[i::processes],
                start,
                threads,
                results,
            ),
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    total = sum(results.get(timeout=seconds + 120) for _ in workers)
    for worker in workers:
        worker.join(30)
    return total / seconds


def pg_database() -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    name = f"privca_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name, name


def drop_pg(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--threads", type=int, default=8, help="issuing threads per process")
    args = parser.parse_args()
    csrs = p256_csrs(2000, "host{}.bench.test")
    rows = []
    for database in args.databases.split(","):
        with tempfile.TemporaryDirectory(prefix="privca-bench-") as tmp:
            directory = Path(tmp)
            pg_name = None
            if database == "sqlite":
                url = f"sqlite:///{directory / 'privca.db'}"
            else:
                url, pg_name = pg_database()
            config_path = write_config(directory, url)
            from ca.bootstrap import bootstrap
            from ca.config import load_config

            core, _ = bootstrap(load_config(config_path))
            core.close()
            try:
                for issuer in ("issuing-ec", "issuing-rsa"):
                    for processes in (int(p) for p in args.processes.split(",")):
                        raw = statistics.median(
                            measure(config_path, "raw", issuer, processes, args.seconds, csrs)
                            for _ in range(args.repeat)
                        )
                        floor, issue = (
                            statistics.median(
                                measure(
                                    config_path,
                                    mode,
                                    issuer,
                                    processes,
                                    args.seconds,
                                    csrs,
                                    args.threads,
                                )
                                for _ in range(args.repeat)
                            )
                            for mode in ("floor", "issue")
                        )
                        rows.append((database, issuer, processes, raw, floor, issue))
                        print(
                            f"{database:<10} {issuer:<12} procs={processes} "
                            f"raw={raw:8.0f}/s floor={floor:8.0f}/s issue={issue:8.0f}/s "
                            f"ratio={issue / raw:5.2f} ceiling={floor / raw:5.2f}",
                            flush=True,
                        )
            finally:
                if pg_name:
                    drop_pg(pg_name)
    print("\nmedian of", args.repeat, "windows of", args.seconds, "s each")
    print("floor = the crypto every issuance must do, without policy, storage or audit")
    print(
        f"{'database':<10} {'issuer':<12} {'procs':>5} {'raw sig/s':>10} {'floor/s':>8} "
        f"{'issued/s':>9} {'ratio':>6} {'ceiling':>8} {'issued/floor':>13}"
    )
    for database, issuer, processes, raw, floor, issue in rows:
        print(
            f"{database:<10} {issuer:<12} {processes:>5} {raw:>10.0f} {floor:>8.0f} "
            f"{issue:>9.0f} {issue / raw:>6.2f} {floor / raw:>8.2f} {issue / floor:>13.2f}"
        )


if __name__ == "__main__":
    main()
