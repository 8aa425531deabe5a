"""`privca serve` spreads keep-alive connections over its workers (ca/gunicorn_worker.py).

Without it, a burst of new connections could all land in one worker, which then ran on one core
while the other idled; keep-alive clients (EST devices, ACME clients, load balancers) never move.
"""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.integration.server import RunningServer, free_port, start_server

CONNECTIONS = 16


def _worker_pids(arbiter: int) -> list[int]:
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    return [int(pid) for pid in children]


def _established_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    return inodes


def _connections_held(pid: int, inodes: set[str]) -> int:
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


def _spread_of_a_burst(port: int, context: ssl.SSLContext, arbiter: int) -> list[int]:
    """Open CONNECTIONS keep-alive connections at once, one request each, and keep them open:
    how many each worker of `arbiter` then holds."""
    connections: list[http.client.HTTPSConnection] = []
    try:
        start = threading.Barrier(CONNECTIONS)
        statuses: list[int] = []

        def connect() -> None:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
            connections.append(connection)
            start.wait(timeout=30)
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)

        threads = [threading.Thread(target=connect) for _ in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert statuses == [200] * CONNECTIONS
        inodes = _established_inodes(port)
        return [_connections_held(pid, inodes) for pid in _worker_pids(arbiter)]
    finally:
        for connection in connections:
            connection.close()


def _assert_even(held: list[int]) -> None:
    assert len(held) == 2 and sum(held) == CONNECTIONS, held
    # Even is 8/8; a connection whose accept raced its worker's count may tip it by one or two.
    assert min(held) >= CONNECTIONS // 2 - 2, held


def test_a_burst_of_keep_alive_connections_is_spread_over_the_workers(tmp_path: Path):
    server: RunningServer = start_server(tmp_path, f"sqlite:///{tmp_path / 'privca.db'}")
    try:
        _assert_even(_spread_of_a_burst(server.port, server.ssl_context(), server.process.pid))
    finally:
        server.stop()


def test_the_example_gunicorn_config_serves_privca_with_balanced_workers(tmp_path: Path):
    """config/gunicorn.conf.py (for operators who run gunicorn themselves) starts, serves over
    TLS, and uses the same balanced workers and hooks as `privca serve`."""
    first = start_server(tmp_path, f"sqlite:///{tmp_path / 'privca.db'}")
    first.stop()  # it made the CA, the token and the TLS files; gunicorn serves them next
    tls = first.data_dir / "tls"
    port = free_port()
    environment = dict(first.env, PRIVCA_CONFIG=str(first.config_path))
    environment["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    conf = Path(__file__).resolve().parents[2] / "config" / "gunicorn.conf.py"
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(gunicorn),
                "-c",
                str(conf),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--certfile",
                str(tls / "server.crt"),
                "--keyfile",
                str(tls / "server.key"),
                "--ca-certs",
                str(tls / "client-ca.pem"),
            ],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        context = first.ssl_context()
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != 200:
            assert process.poll() is None, log_path.read_text()
            try:
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", port, context=context, timeout=5
                )
                connection.request("GET", "/readyz")
                status = connection.getresponse().status
                connection.close()
            except OSError:
                time.sleep(0.3)
        assert status == 200, log_path.read_text()
        _assert_even(_spread_of_a_burst(port, context, process.pid))
        text = log_path.read_text()
        assert "Traceback" not in text, text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
