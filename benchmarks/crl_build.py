"""CRL build-and-sign time and peak memory: privca's streaming encoder next to `openssl ca -gencrl`.

    /tmp/venv/bin/python benchmarks/crl_build.py [--sizes 100000,1000000] [--builder]

For each size, the same revoked entries (random 127-bit serials, one revocation per second,
RFC 5280 reason codes, an invalidity date on every third) are
  - written as an OpenSSL CA index.txt (which can hold an invalidity date only with
    keyCompromise, so openssl's CRL has fewer invalidity dates: privca does a little more work)
    and turned into a signed CRL by `openssl ca -gencrl`;
  - streamed through ca.crl's encoder (entries made on the fly, as rows come from the database)
    into a CRL signed by a software EC P-256 key, in a fresh Python process;
  - with --builder, also built by cryptography's CertificateRevocationListBuilder (constructor).
Each runs in its own child process; CPU time (user + system) and peak RSS come from wait4().
Prints a table and the ratios privca / openssl (the goal: at most 0.5 for both). Every run is
bounded by a timeout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TIMEOUT = 300
REPO = Path(__file__).resolve().parent.parent
REASONS = ["keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged", None]
REASON_CODES = {"keyCompromise": 1, "superseded": 4, "cessationOfOperation": 5,
                "affiliationChanged": 3, None: 0}  # fmt: skip

ENTRIES = textwrap.dedent(
    """
    import random
    from datetime import UTC, datetime, timedelta
    REASON_CODES = {reason_codes!r}
    REASONS = {reasons!r}
    BASE = datetime(2026, 1, 1, tzinfo=UTC)

    def entries(count):
        rng = random.Random(7)
        for i in range(count):
            revoked_at = BASE + timedelta(seconds=i)
            reason = REASON_CODES[REASONS[i % len(REASONS)]]
            invalidity = revoked_at - timedelta(hours=1) if i % 3 == 0 else None
            yield format(rng.getrandbits(127) | 1 << 120, "x"), revoked_at, reason, invalidity
    """
).format(reason_codes=REASON_CODES, reasons=REASONS)

PRIVCA = ENTRIES + textwrap.dedent(
    """
    import sys
    from dataclasses import dataclass
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from ca import crl

    key = load_pem_private_key(open(sys.argv[2], "rb").read(), None)
    certificate = x509.load_pem_x509_certificate(open(sys.argv[3], "rb").read())

    class Signer:
        public_key = key.public_key()
        hash_algorithm = hashes.SHA256()
        def sign(self, data):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))

    @dataclass
    class Issuer:
        certificate: object
        signer: object
        subject_key_id: bytes

    issuer = Issuer(certificate, Signer(),
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    template = crl.crl_template(issuer, now, now + timedelta(days=7), crl.crl_extensions(issuer, 2))
    buffer = crl.encode_revoked_certificates(entries(int(sys.argv[1])))
    tbs = template.tbs(buffer)
    del buffer
    der = template.assemble(tbs, issuer.signer.sign(tbs))
    del tbs
    open(sys.argv[4], "wb").write(der)
    """
)

BUILDER = ENTRIES + textwrap.dedent(
    """
    import sys
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
    from ca.revocation import X509_REASON_FLAGS

    key = load_pem_private_key(open(sys.argv[2], "rb").read(), None)
    certificate = x509.load_pem_x509_certificate(open(sys.argv[3], "rb").read())
    revoked = []
    for serial, revoked_at, reason, invalidity in entries(int(sys.argv[1])):
        builder = x509.RevokedCertificateBuilder().serial_number(int(serial, 16))
        builder = builder.revocation_date(revoked_at)
        if reason:
            builder = builder.add_extension(x509.CRLReason(X509_REASON_FLAGS[reason]), False)
        if invalidity is not None:
            builder = builder.add_extension(x509.InvalidityDate(invalidity), False)
        revoked.append(builder.build())
    now = datetime(2026, 6, 1, tzinfo=UTC)
    signed = x509.CertificateRevocationListBuilder(
        issuer_name=certificate.subject, last_update=now, next_update=now + timedelta(days=7),
        revoked_certificates=revoked,
    ).sign(key, hashes.SHA256())
    open(sys.argv[4], "wb").write(signed.public_bytes(Encoding.DER))
    """
)


def measure(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MiB) of one child process, bounded by TIMEOUT."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    deadline = started + TIMEOUT
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"timed out: {' '.join(command[:3])}")
        time.sleep(0.02)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"failed: {' '.join(command[:3])}: {process.stderr.read().decode()[-2000:]}"
        )
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def write_index(path: Path, count: int) -> None:
    """The same entries as an OpenSSL index.txt (R lines; serials unique, subjects not)."""
    code = ENTRIES + textwrap.dedent(
        """
        import sys
        NAMES = {v: k for k, v in REASON_CODES.items()}
        with open(sys.argv[2], "w") as out:
            for serial, revoked_at, reason, invalidity in entries(int(sys.argv[1])):
                when = revoked_at.strftime("%y%m%d%H%M%SZ")
                name = NAMES[reason]
                if invalidity is not None and name == "keyCompromise":
                    # openssl's index can carry an invalidity date only with keyCompromise
                    extra = f",keyCompromise,{invalidity.strftime('%Y%m%d%H%M%SZ')}"
                else:
                    extra = f",{name}" if name else ""
                serial = serial.upper().zfill(len(serial) + len(serial) % 2)  # even length
                out.write(f"R\\t491231235959Z\\t{when}{extra}\\t{serial}\\tunknown\\t/CN=x\\n")
        """
    )
    subprocess.run([sys.executable, "-c", code, str(count), str(path)], check=True, timeout=TIMEOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--builder", action="store_true", help="also time cryptography's builder")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="privca-crl-bench-"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Bench CA", "-days", "30",
         "-addext", "keyUsage=critical,cRLSign,keyCertSign"],
        cwd=work, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    (work / "openssl.cnf").write_text(
        textwrap.dedent(
            """
            [ca]
            default_ca = bench
            [bench]
            database = index.txt
            crlnumber = crlnumber
            certificate = ca.pem
            private_key = ca.key
            default_md = sha256
            default_crl_days = 7
            crl_extensions = crl_ext
            [crl_ext]
            authorityKeyIdentifier = keyid
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # What a Python process with these imports costs before any entry (a server has paid it).
    baseline = measure(
        [sys.executable, "-c", PRIVCA, "0", "ca.key", "ca.pem", "empty.crl"], work, env
    )
    rows = [(0, "privca (0 entries)", *baseline)]
    for size in sizes:
        (work / "crlnumber").write_text("01\n")
        (work / "index.txt.attr").write_text("unique_subject = no\n")
        write_index(work / "index.txt", size)
        openssl = measure(
            ["openssl", "ca", "-config", "openssl.cnf", "-gencrl", "-out", "openssl.crl"], work
        )
        privca = measure(
            [sys.executable, "-c", PRIVCA, str(size), "ca.key", "ca.pem", "privca.crl"], work, env
        )
        check = subprocess.run(
            ["openssl", "crl", "-inform", "DER", "-in", "privca.crl", "-CAfile", "ca.pem",
             "-noout"], cwd=work, capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        if "verify OK" not in check.stderr:
            raise SystemExit(f"privca's CRL did not verify: {check.stderr}")
        rows.append((size, "openssl ca -gencrl", *openssl))
        rows.append((size, "privca (streaming)", *privca))
        if args.builder:
            builder = measure(
                [sys.executable, "-c", BUILDER, str(size), "ca.key", "ca.pem", "builder.crl"],
                work,
                env,
            )
            rows.append((size, "cryptography builder", *builder))
        print(
            f"{size:>9,} entries: privca/openssl CPU {privca[1] / openssl[1]:.2f}x, "
            f"peak memory {privca[2] / openssl[2]:.2f}x (goal: <= 0.50 each); net of the "
            f"interpreter baseline: CPU {(privca[1] - baseline[1]) / openssl[1]:.2f}x, "
            f"memory {(privca[2] - baseline[2]) / openssl[2]:.2f}x",
            flush=True,
        )
    print()
    print(f"{'entries':>9}  {'implementation':<22} {'wall s':>7} {'CPU s':>7} {'peak MiB':>9}")
    for size, name, wall, cpu, rss in rows:
        print(f"{size:>9,}  {name:<22} {wall:>7.2f} {cpu:>7.2f} {rss:>9.1f}")
    print(f"(work directory: {work})")


if __name__ == "__main__":
    main()
