"""The listener's processes: `privca serve` forks one supervisor, which forks the workers.

`[frontends.ocsp] listen = "host:port"` turns it on, with `listen_processes` workers (default 2).
Each worker binds its own socket to the address with SO_REUSEPORT, so the kernel spreads
connections across them, and builds its own core after the fork (token session, database pool).
The supervisor starts a worker again if one dies, forwards SIGTERM and SIGINT to the workers
and kills what is left after a grace period. Every process asks the kernel for SIGTERM when its
parent dies (PR_SET_PDEATHSIG), so a killed `privca serve` leaves no listener behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ca.errors import ConfigError
from ocsp.settings import OCSPSettings, ocsp_settings

if TYPE_CHECKING:
    from ca.config import Config

log = logging.getLogger("privca.ocsp")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again
STOP_GRACE = 10  # seconds the workers get to stop before they are killed
PR_SET_PDEATHSIG = 1


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
    if (host, port) == (config.server.listen_host, config.server.listen_port):
        raise ConfigError("frontends.ocsp.listen: must differ from server.listen")
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


def die_with_parent(parent: int) -> None:
    """Ask for SIGTERM when the parent process dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's stop still reaches us through the supervisor
    if os.getppid() != parent:
        os._exit(0)


class Supervisor:
    """Starts `listen_processes` workers, starts them again when they die, stops them."""

    def __init__(self, config: Config, settings: OCSPSettings) -> None:
        self.config = config
        self.settings = settings
        self.workers: dict[int, int] = {}  # pid -> worker number
        self.stopping = False

    def run(self) -> None:
        die_with_parent(os.getppid())
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGALRM, self._kill)
        for number in range(self.settings.listen_processes):
            self._start(number)
        while self.workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            number = self.workers.pop(pid, None)
            _forget_metrics(pid)
            if number is None or self.stopping:
                continue
            log.error(
                "OCSP listener worker %d (pid %d) %s; starting another",
                number,
                pid,
                _describe(status),
            )
            time.sleep(RESTART_DELAY)
            if not self.stopping:
                self._start(number)

    def _start(self, number: int) -> None:
        host, port = self.settings.listen  # type: ignore[misc]
        sock = _socket(host, port, reuse_port=True)
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
                    signal.signal(signum, signal.SIG_DFL)
                die_with_parent(supervisor)
                from ocsp.listener import run_worker

                run_worker(self.config, self.settings, sock)
                code = 0
            except BaseException:
                log.exception("OCSP listener worker %d failed", number)
            finally:
                os._exit(code)  # never run the parent's atexit handlers in a forked child
        sock.close()  # only the worker holds it: if the worker dies, the kernel stops using it
        self.workers[pid] = number

    def _stop(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        for pid in list(self.workers):
            _signal(pid, signal.SIGTERM)
        signal.alarm(STOP_GRACE)

    def _kill(self, signum: int, frame: Any) -> None:
        for pid in list(self.workers):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"


def _forget_metrics(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
