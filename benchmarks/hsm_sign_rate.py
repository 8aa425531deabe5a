"""Raw signatures per second through HSMSigner.sign on a temporary SoftHSM token.

For ec-p256 and rsa-2048, with 1 and 2 forked processes: the median of 3 runs of about 2 s each,
and the ratio 2-process/1-process. Every wait is bounded. Run: python benchmarks/hsm_sign_rate.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hsm import HSMSigner, Token, find_module
from hsm.softhsm import ensure_softhsm_token

WAIT_SECONDS = 60.0


def _worker(
    signer: HSMSigner,
    seconds: float,
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue,
) -> None:
    try:
        signer.sign(b"warm up")  # re-initialises PKCS#11 in this child and logs in
        barrier.wait(timeout=WAIT_SECONDS)
        count, message = 0, secrets.token_bytes(64)
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            signer.sign(message)
            count += 1
        results.put((count, time.perf_counter() - start, None))
    except BaseException as exc:  # reported to the parent
        results.put((0, 0.0, f"{type(exc).__name__}: {exc}"))


def one_run(signer: HSMSigner, processes: int, seconds: float) -> float:
    """Signatures per second summed over `processes` forked workers signing for `seconds`."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=_worker, args=(signer, seconds, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=WAIT_SECONDS + seconds) for _ in workers]
    for worker in workers:
        worker.join(timeout=WAIT_SECONDS)
        if worker.is_alive():
            worker.kill()
    errors = [error for _, _, error in reports if error]
    if errors:
        raise RuntimeError("; ".join(errors))
    return sum(count / elapsed for count, elapsed, _ in reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="privca-bench-") as directory:
        pin = secrets.token_hex(8)
        ensure_softhsm_token(Path(directory), "bench", pin, secrets.token_hex(8))
        token = Token(find_module(), "bench", lambda: pin)
        print(
            f"module {find_module()}, {os.cpu_count()} CPUs, {arguments.runs} runs of "
            f"{arguments.seconds:.1f} s, median signatures/second"
        )
        print(f"{'key type':<10} {'1 process':>10} {'2 processes':>12} {'2/1':>6}")
        for key_type in ("ec-p256", "rsa-2048"):
            signer = token.generate_key(key_type, f"bench-{key_type}")
            signer.sign(b"parent uses the token before fork")
            rates = {}
            for processes in (1, 2):
                runs = [
                    one_run(signer, processes, arguments.seconds) for _ in range(arguments.runs)
                ]
                rates[processes] = statistics.median(runs)
            print(f"{key_type:<10} {rates[1]:>10.0f} {rates[2]:>12.0f} {rates[2] / rates[1]:>6.2f}")
        token.close()


if __name__ == "__main__":
    main()
