"""`privca serve` spreads keep-alive connections over its workers (ca/gunicorn_worker.py).

Without it, a burst of new connections could all land in one worker, which then ran on one core
while the other idled; keep-alive clients (EST devices, ACME clients, load balancers) never move.
"""

from __future__ import annotations

import http.client
import os
import threading
from pathlib import Path

from tests.integration.server import RunningServer, start_server

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


def test_a_burst_of_keep_alive_connections_is_spread_over_the_workers(tmp_path: Path):
    server: RunningServer = start_server(tmp_path, f"sqlite:///{tmp_path / 'privca.db'}")
    connections: list[http.client.HTTPSConnection] = []
    try:
        start = threading.Barrier(CONNECTIONS)
        statuses: list[int] = []

        def connect() -> None:
            connection = http.client.HTTPSConnection(
                "127.0.0.1", server.port, context=server.ssl_context(), timeout=30
            )
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

        inodes = _established_inodes(server.port)
        workers = _worker_pids(server.process.pid)
        assert len(workers) == 2
        held = [_connections_held(pid, inodes) for pid in workers]
        assert sum(held) == CONNECTIONS
        # Even split is 8/8; a connection whose accept raced its worker's count may tip it by one.
        assert min(held) >= CONNECTIONS // 2 - 2, held
    finally:
        for connection in connections:
            connection.close()
        server.stop()
