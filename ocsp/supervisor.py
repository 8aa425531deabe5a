"""The listener's processes: `privca serve` forks one supervisor, which forks the workers.

`[frontends.ocsp] listen = "host:port"` turns it on, with `listen_processes` workers (default 2).
Each worker binds its own socket to the address with SO_REUSEPORT, so the kernel spreads
connections across them, and builds its own core after the fork (token session, database pool).
The supervisor starts a worker again if one dies or cannot be started (with a growing delay
while that keeps happening), forwards SIGTERM and SIGINT to the workers and kills what is left
after a grace period. Every process asks the kernel for SIGTERM when its parent dies
(PR_SET_PDEATHSIG), so a killed `privca serve` leaves no listener behind.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ca.errors import ConfigError
from ca.processes import fork_child, send_signal
from ocsp.settings import OCSPSettings, ocsp_settings

if TYPE_CHECKING:
    from ca.config import Config

log = logging.getLogger("privca.ocsp")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again the first time
MAX_RESTART_DELAY = 60.0  # the delay doubles with each quick failure, up to this
STABLE_AFTER = 30.0  # seconds up after which a worker's next death counts as a first one
STOP_GRACE = 10  # seconds the workers get to stop before they are killed
WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 (compared with, never bound here)


@dataclass(frozen=True)
class OCSPListener:
    """What `privca serve` needs to run the listener (entry point group "privca.listeners")."""

    label: str
    url: str
    config: Config
    settings: OCSPSettings

    def run(self) -> None:
        """The supervisor's life, in the process `privca serve` forked for it."""
        Supervisor(self.config, self.settings).run()


def prepare(config: Config) -> OCSPListener | None:
    """The listener to start, None unless configured; raises ConfigError if it cannot bind.

    Runs in `privca serve`'s master before any fork, so a taken port stops the start.
    """
    settings = ocsp_settings(config)
    if settings.listen is None:
        return None
    host, port = settings.listen
    if overlaps((host, port), (config.server.listen_host, config.server.listen_port)):
        raise ConfigError("frontends.ocsp.listen: must not overlap server.listen")
    try:
        with _socket(host, port, reuse_port=False):
            pass
    except OSError as exc:
        raise ConfigError(f"frontends.ocsp.listen: cannot listen on {host}:{port}: {exc}") from None
    shown = f"[{host}]" if ":" in host else host
    return OCSPListener(
        "OCSP listener",
        f"http://{shown}:{port}/ocsp",
        config,
        settings,
    )


def overlaps(first: tuple[str, int], second: tuple[str, int]) -> bool:
    """Whether two listen addresses can take the same connections: the same port, and the same
    host or a wildcard on either side (whoever binds first would win)."""
    (host, port), (other_host, other_port) = first, second
    if port != other_port:
        return False
    return host == other_host or host in WILDCARDS or other_host in WILDCARDS


def _socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if reuse_port:
            sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


class RestartPolicy:
    """When to start a worker again: after RESTART_DELAY, doubling with each death that follows
    a short life (a token or database that is not there yet) up to MAX_RESTART_DELAY, and back
    to RESTART_DELAY after a worker has stayed up STABLE_AFTER seconds."""

    def __init__(self) -> None:
        self.started_at: dict[int, float] = {}  # worker number -> monotonic start time
        self.delays: dict[int, float] = {}  # worker number -> the next restart delay

    def started(self, number: int, now: float) -> None:
        self.started_at[number] = now

    def next_start(self, number: int, now: float) -> float:
        """When to start worker `number` again, now that it has died (or failed to start)."""
        started = self.started_at.pop(number, None)
        if started is not None and now - started >= STABLE_AFTER:
            self.delays.pop(number, None)
        delay = self.delays.get(number, RESTART_DELAY)
        self.delays[number] = min(delay * 2, MAX_RESTART_DELAY)
        return now + delay


class Supervisor:
    """Starts `listen_processes` workers, starts them again when they die, stops them."""

    def __init__(self, config: Config, settings: OCSPSettings) -> None:
        self.config = config
        self.settings = settings
        self.workers: dict[int, int] = {}  # pid -> worker number
        self.due: dict[int, float] = {}  # worker number -> monotonic time to start it
        self.restarts = RestartPolicy()
        self.stopping = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGALRM, self._kill)
        now = time.monotonic()
        self.due = dict.fromkeys(range(self.settings.listen_processes), now)
        while not self.stopping or self.workers:
            if not self.stopping:
                self._start_due()
            if not self.workers and not self.due:
                break
            reaped = self._wait(None if self.stopping or not self.due else min(self.due.values()))
            if reaped is None:
                continue
            pid, status = reaped
            number = self.workers.pop(pid, None)
            _forget_metrics(pid)
            if number is None or self.stopping:
                continue
            self.due[number] = self.restarts.next_start(number, time.monotonic())
            log.error(
                "OCSP listener worker %d (pid %d) %s; starting another in %.0f s",
                number,
                pid,
                _describe(status),
                self.due[number] - time.monotonic(),
            )

    def _start_due(self) -> None:
        now = time.monotonic()
        for number, at in sorted(self.due.items()):
            if at > now or self.stopping:
                continue
            del self.due[number]
            try:
                self._start(number)
            except Exception as exc:  # a port taken meanwhile, no file descriptors, no fork
                self.due[number] = self.restarts.next_start(number, now)
                log.error(
                    "OCSP listener worker %d could not be started (%s); trying again in %.0f s",
                    number,
                    exc,
                    self.due[number] - now,
                )

    def _wait(self, until: float | None) -> tuple[int, int] | None:
        """The next child that exited (pid, status), waiting at most until `until` (monotonic;
        None: until one exits); None when the time is up. Children are reaped while waiting."""
        if until is None:
            try:
                return os.wait()
            except ChildProcessError:
                # Nothing left to wait for although workers are listed: start them afresh.
                now = time.monotonic()
                for number in self.workers.values():
                    self.due[number] = now
                self.workers.clear()
                return None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0
            if pid:
                return pid, status
            left = until - time.monotonic()
            if left <= 0 or self.stopping:
                return None
            time.sleep(min(left, 0.1))

    def _start(self, number: int) -> None:
        host, port = self.settings.listen  # type: ignore[misc]
        sock = _socket(host, port, reuse_port=True)

        def serve() -> None:
            from ocsp.listener import run_worker

            run_worker(self.config, self.settings, sock)

        def started(pid: int) -> None:
            self.workers[pid] = number  # before a SIGTERM handler can look for it
            self.restarts.started(number, time.monotonic())

        try:
            fork_child(serve, f"OCSP listener worker {number}", started)
        finally:
            sock.close()  # only the worker holds it: if it dies, the kernel stops using it

    def _stop(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        for pid in list(self.workers):
            send_signal(pid, signal.SIGTERM)
        signal.alarm(STOP_GRACE)

    def _kill(self, signum: int, frame: Any) -> None:
        for pid in list(self.workers):
            send_signal(pid, signal.SIGKILL)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"


def _forget_metrics(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
