"""A real `privca serve` on a free loopback port, with its own SoftHSM token and database.

The server runs the embedded first-run path: SoftHSM token created under its data directory with
random PINs in files, root and issuing CAs generated in the token, HTTPS with a certificate from
its own CA. Tests talk to it with real clients (curl, openssl, certbot, urllib) over loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRIVCA = str(Path(sys.executable).parent / "privca")
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    base_url: str
    port: int
    config_path: Path
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def root_pem(self) -> Path:
        return self.data_dir / "tls" / "root.pem"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root_pem))

    def cli(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `privca --config … ARGS` against this server's configuration and data."""
        result = subprocess.run(
            [PRIVCA, "--config", str(self.config_path), *args],
            env=self.env,
            input=input and input.decode(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"privca {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def admin_token(self, scopes: str = "admin") -> str:
        return self.cli(
            "token", "create", "--name", f"test-{scopes}", "--scope", scopes
        ).stdout.strip()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTPS request; returns status, headers and body whatever the status."""
        req = urllib.request.Request(
            self.base_url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def json(
        self, method: str, path: str, payload: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        status, _, body = self.request(
            method,
            path,
            headers=headers,
            body=json.dumps(payload).encode() if payload is not None else None,
        )
        return status, json.loads(body) if body else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def write_server_config(
    directory: Path, database_url: str, port: int, extra: str = "", workers: int = 2
) -> Path:
    path = directory / "privca.toml"
    path.write_text(f"""
data_dir = "{directory / "data"}"
[server]
listen = "127.0.0.1:{port}"
workers = {workers}
threads = 4
tls_names = ["localhost", "127.0.0.1"]
[database]
url = "{database_url}"
[logging]
level = "info"
{extra}
""")
    return path


def start_server(
    directory: Path,
    database_url: str,
    *,
    extra: str = "",
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> RunningServer:
    port = free_port()
    config = write_server_config(directory, database_url, port, extra, workers)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PRIVCA_")}
    environment.pop("SOFTHSM2_CONF", None)
    environment.update(env or {})
    log_path = directory / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [PRIVCA, "--config", str(config), "serve"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(
        f"https://127.0.0.1:{port}",
        port,
        config,
        directory / "data",
        process,
        log_path,
        environment,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"privca serve exited with {process.returncode}:\n{server.log()}")
        if server.root_pem.exists():
            try:
                status, _, _ = server.request("GET", "/readyz", timeout=5)
                if status == 200:
                    return server
            except (OSError, ssl.SSLError):
                pass
        time.sleep(0.3)
    server.stop()
    raise AssertionError(f"privca serve was not ready in {START_TIMEOUT} s:\n{server.log()}")
