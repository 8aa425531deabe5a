"""OCSP responses per second with wrk: privca next to openssl ocsp, cfssl ocspserve and nginx.

    /tmp/venv/bin/python benchmarks/ocsp_load.py [--duration 10] [--connections 1,16,64]

Needs the Debian packages wrk, golang-cfssl and nginx (plus openssl). Everything listens on
127.0.0.1 only and every process is stopped at the end; each wrk run lasts --duration seconds.

- privca listener: the dedicated OCSP listener of `privca serve` (`[frontends.ocsp] listen`,
  uvloop, 2 processes) over plain HTTP, with 1,000 certificates issued and their responses
  pre-signed (`privca ocsp export`), GET and POST over a mix of the 1,000 requests;
- privca gunicorn: the same server's /ocsp in the main app (gunicorn gthread, 2 workers, plain
  HTTP), for reference;
- openssl: `openssl ocsp -port -multi 2` with an index of 1,000 certificates (signs each answer;
  GET only: it leaves wrk's HTTP/1.1 POST connections hanging);
- cfssl: `cfssl ocspserve` serving 1,000 pre-signed responses from a file (POST only: the
  Debian build cannot decode GET paths), so GET ratios are against cfssl's POST rate;
- nginx: one pre-signed response as a static file (what this machine can do at best).
privca first gets a --warmup run (not counted) so that it, like the others, has every answer in
memory when measured.
Prints requests per second, p99 latency and the ratios privca/cfssl and privca/nginx.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parent.parent
PRIVCA = str(Path(sys.executable).parent / "privca")
COUNT = 1000
LISTENER = "privca listener"
GUNICORN = "privca gunicorn"

LUA = """
local lines = {}
for line in io.lines("%(list)s") do lines[#lines + 1] = line end
local bodies = {}
local method = "%(method)s"
if method == "POST" then
  for i, name in ipairs(lines) do
    local f = io.open(name, "rb"); bodies[i] = f:read("*a"); f:close()
  end
end
local counter = 0
request = function()
  counter = counter + 1
  local i = (counter %% #lines) + 1
  if method == "POST" then
    return wrk.format("POST", "%(post_path)s",
      {["Content-Type"] = "application/ocsp-request"}, bodies[i])
  end
  return wrk.format("GET", "%(get_prefix)s" .. lines[i])
end
"""

PREPARE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cryptography.hazmat.primitives.asymmetric import ec
    from ca.cli import _core
    from ca.config import load_config
    from ca.issuance_request import Identifier, IssuanceRequest
    from ocsp.responder import Responder
    from ocsp import messages

    config = load_config(sys.argv[1])
    out = Path(sys.argv[2])
    core = _core(config)
    responder = Responder(core)
    for i in range(int(sys.argv[3])):
        key = ec.generate_private_key(ec.SECP256R1())
        issued = core.issue(IssuanceRequest(
            channel="cli", requester="bench", profile="tls-server", public_key=key.public_key(),
            identifiers=(Identifier("dns", f"host{i}.bench.test"),)))
        cert_id = responder.cert_id(issued.issuer, issued.serial, "sha1")
        (out / f"{i}.der").write_bytes(messages.encode_request(cert_id))
    core.close()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{url}: server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                response.read()
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url}: not answering after {timeout} s")


def start(command: list[str], log: Path, *, session: bool = True, **kwargs) -> subprocess.Popen:
    """A server in its own process group, so stop() reaches its children too.

    `openssl ocsp -multi` calls setpgid() itself, which fails in a new session: it gets a
    process group of its own without one.
    """
    grouping = {"start_new_session": True} if session else {"process_group": 0}
    return subprocess.Popen(
        command, stdout=log.open("wb"), stderr=subprocess.STDOUT, **grouping, **kwargs
    )


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def wrk(url: str, script: Path, connections: int, duration: int) -> tuple[float, float, int]:
    """(requests/s, p99 ms, non-2xx count) from one wrk run."""
    threads = min(2, connections)
    result = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", result.stdout).groups()
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", result.stdout)
    return rate, p99, int(errors.group(1)) if errors else 0


def ratio(ours: float, theirs: float) -> str:
    # openssl's one-connection-per-child server stalls under wrk's keep-alive at c > 1.
    return f"{ours / theirs:.2f}x" if theirs else "n/a (0/s)"


def lua(
    work: Path, name: str, entries: list[str], method: str, post_path: str, get_prefix: str
) -> Path:
    listing = work / f"{name}.list"
    listing.write_text("\n".join(entries) + "\n")
    script = work / f"{name}.lua"
    script.write_text(
        LUA % {"list": listing, "method": method, "post_path": post_path, "get_prefix": get_prefix}
    )
    return script


def encoded(der: bytes) -> str:
    return urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def software_ca(work: Path) -> tuple[list[bytes], list[int]]:
    """A software CA for openssl and cfssl: index.txt, pre-signed responses, requests."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp as x509_ocsp

    from ocsp import messages
    from tests.support.software_ca import self_signed_ca

    ca, key = self_signed_ca("Bench CA", days=30)
    name = ca.subject
    now = datetime.now(UTC)
    (work / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (work / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    import hashlib

    from asn1crypto import x509 as asn1_x509

    parsed = asn1_x509.Certificate.load(ca.public_bytes(serialization.Encoding.DER))
    name_hash = hashlib.sha1(parsed.subject.dump()).digest()  # noqa: S324 - CertID
    key_hash = hashlib.sha1(bytes(parsed.public_key["public_key"])).digest()  # noqa: S324
    requests, responses, serials, index = [], [], [], []
    for i in range(COUNT):
        serial = (0x5A << 120) | (i * 7919 + 1)
        serials.append(serial)
        requests.append(
            messages.encode_request(
                messages.encode_cert_id(messages.OID_SHA1, name_hash, key_hash, serial)
            )
        )
        hexed = format(serial, "X")
        index.append(f"V\t491231235959Z\t\t{hexed}\tunknown\t/CN=host{i}\n")
        # cfssl needs a certificate per response; a minimal one with the right serial does.
        leaf = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        response = (
            x509_ocsp.OCSPResponseBuilder()
            .add_response(
                cert=leaf,
                issuer=ca,
                algorithm=hashes.SHA1(),  # noqa: S303 - RFC 5019 CertIDs
                cert_status=x509_ocsp.OCSPCertStatus.GOOD,
                this_update=now,
                next_update=now + timedelta(days=4),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(x509_ocsp.OCSPResponderEncoding.HASH, ca)
            .sign(key, hashes.SHA256())
        )
        responses.append(response.public_bytes(serialization.Encoding.DER))
    (work / "index.txt").write_text("".join(index))
    (work / "cfssl-responses.txt").write_text(
        "".join(base64.b64encode(r).decode() + "\n" for r in responses)
    )
    for i, request in enumerate(requests):
        (work / "software" / f"{i}.der").write_bytes(request)
    return requests, serials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    # One listener process by default: on a 2-core machine wrk needs the other core, and two
    # listener processes fighting wrk for it stretched the p99 (measured: 8 ms with one process
    # against 22-77 ms with two at 64 connections, at the same or a higher rate).
    parser.add_argument("--listen-processes", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    for tool in ("wrk", "cfssl", "nginx", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: wrk, golang-cfssl, nginx)")
    connections = [int(c) for c in args.connections.split(",")]
    # A TERM (e.g. from timeout) must still stop every server below: make it an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = Path(tempfile.mkdtemp(prefix="privca-ocsp-bench-"))
    work.chmod(0o755)
    (work / "privca").mkdir()
    (work / "software").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVCA_")}
    env.pop("SOFTHSM2_CONF", None)
    env["PYTHONPATH"] = str(REPO)
    processes: list[subprocess.Popen] = []
    results: dict[tuple[str, str, int], tuple[float, float, int]] = {}
    try:
        # privca: init, 1,000 certificates, pre-signed responses, then serve over HTTP.
        port = free_port()
        listener_port = free_port()
        config = work / "privca.toml"
        config.write_text(
            f'data_dir = "{work / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
            f"tls = false\nworkers = {args.workers}\nthreads = {args.threads}\n"
            f'[logging]\nlevel = "warning"\n'
            f'[frontends.ocsp]\nlisten = "127.0.0.1:{listener_port}"\n'
            f"listen_processes = {args.listen_processes}\n"
        )
        print("preparing: privca init, 1,000 certificates, pre-signing ...", flush=True)
        subprocess.run(
            [PRIVCA, "--config", str(config), "init"],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        subprocess.run(
            [sys.executable, "-c", PREPARE, str(config), str(work / "privca"), str(COUNT)],
            env=env,
            check=True,
            timeout=600,
        )
        static = work / "static" / "ocsp"
        subprocess.run(
            [PRIVCA, "--config", str(config), "ocsp", "export", str(static)],
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        privca = start([PRIVCA, "--config", str(config), "serve"], work / "privca.log", env=env)
        processes.append(privca)
        wait_http(f"http://127.0.0.1:{port}/healthz", process=privca)
        wait_http(f"http://127.0.0.1:{listener_port}/", process=privca)
        privca_requests = [(work / "privca" / f"{i}.der").read_bytes() for i in range(COUNT)]

        print("preparing: software CA for openssl and cfssl ...", flush=True)
        software_requests, _ = software_ca(work)

        openssl_port = free_port()
        openssl = start(
            [
                "openssl",
                "ocsp",
                "-index",
                "index.txt",
                "-port",
                str(openssl_port),
                "-rsigner",
                "ca.pem",
                "-rkey",
                "ca.key",
                "-CA",
                "ca.pem",
                "-multi",
                "2",
                "-nmin",
                "60",
                "-ignore_err",
            ],
            work / "openssl.log",
            cwd=work,
            session=False,
        )
        processes.append(openssl)
        cfssl_port = free_port()
        cfssl = start(
            [
                "cfssl",
                "ocspserve",
                "-address",
                "127.0.0.1",
                "-port",
                str(cfssl_port),
                "-responses",
                "cfssl-responses.txt",
            ],
            work / "cfssl.log",
            cwd=work,
        )
        processes.append(cfssl)
        nginx_port = free_port()
        one = encoded(privca_requests[0])
        (work / "nginx.conf").write_text(
            textwrap.dedent(
                f"""
                user root;
                worker_processes 2;
                daemon off;
                pid {work}/nginx.pid;
                error_log {work}/nginx-error.log;
                events {{ worker_connections 4096; }}
                http {{
                    access_log off;
                    server {{
                        listen 127.0.0.1:{nginx_port};
                        location / {{
                            root {work / "static"};
                            default_type application/ocsp-response;
                        }}
                    }}
                }}
                """
            )
        )
        nginx = start(
            ["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], work / "nginx.log"
        )
        processes.append(nginx)
        for target_port, process in (
            (openssl_port, openssl),
            (cfssl_port, cfssl),
            (nginx_port, nginx),
        ):
            wait_http(f"http://127.0.0.1:{target_port}/", timeout=30, process=process)

        privca_paths = [encoded(r) for r in privca_requests]
        software_paths = [encoded(r) for r in software_requests]
        privca_get = lua(work, "privca-get", privca_paths, "GET", "", "/ocsp/")
        privca_post = lua(
            work,
            "privca-post",
            [str(work / "privca" / f"{i}.der") for i in range(COUNT)],
            "POST",
            "/ocsp",
            "",
        )
        targets = {
            (LISTENER, "GET"): (listener_port, privca_get),
            (LISTENER, "POST"): (listener_port, privca_post),
            (GUNICORN, "GET"): (port, privca_get),
            (GUNICORN, "POST"): (port, privca_post),
            ("openssl", "GET"): (
                openssl_port,
                lua(work, "openssl-get", software_paths, "GET", "", "/"),
            ),
            # `openssl ocsp` keeps wrk's HTTP/1.1 POST connections open without a length, so
            # wrk never sees an answer: openssl is measured with GET only.
            # Debian's cfssl cannot decode GET paths (a leading "/" and "+" as space end in
            # "Error decoding base64 from URL"), so it is measured with POST only.
            ("cfssl", "POST"): (
                cfssl_port,
                lua(
                    work,
                    "cfssl-post",
                    [str(work / "software" / f"{i}.der") for i in range(COUNT)],
                    "POST",
                    "/",
                    "",
                ),
            ),
            ("nginx (1 static file)", "GET"): (
                nginx_port,
                lua(work, "nginx-get", [one], "GET", "", "/ocsp/"),
            ),
        }
        # Check every target answers a real OCSP response before measuring.
        for (name, method), (target_port, _) in targets.items():
            sample = (
                privca_requests[0] if name.startswith(("privca", "nginx")) else software_requests[0]
            )
            prefix = "/ocsp" if name.startswith(("privca", "nginx")) else ""
            if method == "GET":
                request = urllib.request.Request(
                    f"http://127.0.0.1:{target_port}{prefix}/{encoded(sample)}"
                )
            else:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{target_port}{prefix or '/'}",
                    data=sample,
                    headers={"Content-Type": "application/ocsp-request"},
                )
            from cryptography.x509 import ocsp as x509_ocsp

            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    parsed = x509_ocsp.load_der_ocsp_response(response.read())
            except (OSError, ValueError) as exc:
                raise SystemExit(f"{name} {method} does not answer OCSP: {exc}") from None
            if parsed.response_status != x509_ocsp.OCSPResponseStatus.SUCCESSFUL:
                raise SystemExit(f"{name} {method}: {parsed.response_status}")
        if args.warmup:
            # The others hold every response from the start; privca reads them from the
            # database on first use (per process), which is not what is measured here.
            print(f"warming up privca for {args.warmup} s ...", flush=True)
            for (name, _), (target_port, script) in targets.items():
                if name.startswith("privca"):
                    wrk(f"http://127.0.0.1:{target_port}", script, 16, args.warmup)
        for connections_count in connections:
            for (name, method), (target_port, script) in targets.items():
                result = wrk(
                    f"http://127.0.0.1:{target_port}", script, connections_count, args.duration
                )
                results[(name, method, connections_count)] = result
                print(
                    f"  {name:<22} {method:<4} c={connections_count:<3} {result[0]:>10,.0f}/s "
                    f"p99 {result[1]:>7.2f} ms  non-2xx {result[2]}",
                    flush=True,
                )
    finally:
        for process in processes:
            stop(process)
    print()
    print(f"{'server':<22} {'method':<6}" + "".join(f"{'c=' + str(c):>22}" for c in connections))
    for name, method in dict.fromkeys((n, m) for n, m, _ in results):
        cells = "".join(
            f"{results[(name, method, c)][0]:>11,.0f}/s {results[(name, method, c)][1]:>6.1f}ms"
            for c in connections
        )
        print(f"{name:<22} {method:<6}{cells}")
    print()
    for name in (LISTENER, GUNICORN):
        print(f"{name}:")
        for c in connections:
            for method in ("GET", "POST"):
                ours = results[(name, method, c)][0]
                cfssl = results[("cfssl", "POST", c)][0]
                openssl = results[("openssl", "GET", c)][0]
                nginx = results[("nginx (1 static file)", "GET", c)][0]
                print(
                    f"  c={c:<3} {method:<4} /cfssl(POST) {ratio(ours, cfssl)} (goal >= 1.0)  "
                    f"/openssl(GET) {ratio(ours, openssl)}  "
                    f"/nginx {ratio(ours, nginx)} (goal >= 0.25)"
                )
        last = connections[-1]
        print(
            f"  p99 at c={last}: GET {results[(name, 'GET', last)][1]:.1f} ms, "
            f"POST {results[(name, 'POST', last)][1]:.1f} ms (goal < 20 ms)"
        )
    print(f"(work directory: {work})")


if __name__ == "__main__":
    main()
