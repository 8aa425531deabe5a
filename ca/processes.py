"""Child processes that `privca serve` forks beside gunicorn (front ends' listeners) and the
processes those fork in turn: signals safe across the fork, death with the parent, and a stop
that cannot hit a reused pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("privca.processes")


PR_SET_PDEATHSIG = 1
# Signals whose Python handlers a forked child must not run: blocked across the fork.
CHILD_SIGNALS = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGCHLD, signal.SIGHUP}
)


def die_with_parent(parent: int) -> None:
    """Ask for SIGTERM when the parent process dies; exit now if `parent` already has.

    `parent` is the pid read before the fork: read after it, a parent that died in between
    would already have been replaced by init.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's stop still reaches the child through its own parent
    if os.getppid() != parent:
        os._exit(0)


def fork_child(run: Callable[[], None], description: str, started: Callable[[int], None]) -> int:
    """Fork a process that runs `run()` and exits; it never returns into the caller's stack.

    Signals are blocked across the fork, so the parent records the child (`started(pid)`)
    before its own handlers can look for it, and the child resets every Python handler it
    inherited before it can receive anything. The child gets SIGTERM when its parent dies.
    """
    parent = os.getpid()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for signum in CHILD_SIGNALS:
                    if callable(signal.getsignal(signum)):  # keep SIG_IGN (nohup)
                        signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                die_with_parent(parent)
                run()
                code = 0
            except BaseException:
                log.exception("%s failed", description)
            finally:
                os._exit(code)  # the parent's atexit handlers and buffers are not the child's
        started(pid)
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def send_signal(pid: int, signum: int) -> None:
    """Signal a child of ours that may have exited already."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


@dataclass
class ListenerProcess:
    """A listener process forked by `privca serve`. gunicorn's SIGCHLD handler reaps any child,
    so its pid may be reused once it has exited: it is signalled and waited for through a
    pidfd, which always means this process."""

    pid: int
    pidfd: int | None

    def signal(self, signum: int) -> None:
        if self.pidfd is None:
            send_signal(self.pid, signum)
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signum)

    def reap(self) -> bool:
        """Whether it has exited (and is reaped now, if gunicorn has not done so)."""
        try:
            if self.pidfd is None:
                return os.waitpid(self.pid, os.WNOHANG)[0] != 0
            return os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG) is not None
        except ChildProcessError:
            return True  # already reaped (by gunicorn's handler)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def start_listener_process(listener: Any) -> ListenerProcess:
    """Fork a process for `listener.run()`; the child never returns into gunicorn."""
    process = ListenerProcess(0, None)

    def started(pid: int) -> None:
        # Before anything can reap the child: gunicorn's handlers are installed later.
        process.pid = pid
        with contextlib.suppress(OSError, AttributeError):
            process.pidfd = os.pidfd_open(pid)

    fork_child(listener.run, f"listener {listener.label}", started)
    return process


def stop_listener_processes(processes: list[ListenerProcess], grace: float = 15.0) -> None:
    """SIGTERM the listener processes and wait for them (bounded), then SIGKILL."""
    if not processes:
        return
    # gunicorn's SIGCHLD handler reaps any child: our waits below must see ours first.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    waiting = list(processes)
    try:
        for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for process in waiting:
                process.signal(signum)
            deadline = time.monotonic() + wait
            while waiting and time.monotonic() < deadline:
                waiting = [process for process in waiting if not process.reap()]
                if waiting:
                    time.sleep(0.05)
            if not waiting:
                return
        log.error("listener processes %s did not stop", sorted(p.pid for p in waiting))
    finally:
        for process in processes:
            process.close()
