"""The PKCS#11 module (shared library): where to find it, and its per-process state.

PKCS#11 state belongs to a process. A library initialised before fork() must not be used by the
child, so state is kept per pid and a child re-initialises on first use. python-pkcs11 0.10 calls
C_Initialize(NULL), which tells SoftHSM to do no locking of its own: two threads in the library at
once crash it or get CKR_GENERAL_ERROR. Every call into a module therefore runs under the one lock
of its `LoadedModule` (measured: one ECDSA P-256 signature takes ~0.1 ms, so one lock around one
logged-in session costs little, and separate processes are the way to scale).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pkcs11
from pkcs11.exceptions import PKCS11Error

from hsm.errors import HSMError

if TYPE_CHECKING:
    from pkcs11 import Session
    from pkcs11.types import Token as PKCS11Token

    from hsm.token import Token

# Where distributions install SoftHSM v2: Debian/Ubuntu (multiarch and not), Fedora/RHEL,
# Alpine, FreeBSD, macOS (Homebrew, MacPorts).
SOFTHSM_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/arm-linux-gnueabihf/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/local/lib/pkcs11/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    "/usr/local/opt/softhsm/lib/softhsm/libsofthsm2.so",
    "/opt/local/lib/softhsm/libsofthsm2.so",
)


def find_module(explicit: str | None = None) -> str:
    """Path of the PKCS#11 library: `explicit` if given, else SoftHSM where it is usually installed.

    An explicit path that does not exist is an error rather than a reason to fall back to
    SoftHSM: a production CA must never quietly sign with a software token. Raises HSMError.
    """
    if explicit:
        if Path(explicit).is_file():
            return explicit
        raise HSMError(f"PKCS#11 module {explicit} does not exist or is not a file")
    for candidate in SOFTHSM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise HSMError(
        "no PKCS#11 module configured and SoftHSM v2 (libsofthsm2.so) was not found in "
        + ", ".join(SOFTHSM_CANDIDATES)
        + "; install softhsm2 or set the module path"
    )


@dataclass
class Login:
    """The one logged-in session a process keeps on one token, shared by its Token handles."""

    session: Session
    pkcs11_token: PKCS11Token
    handles: weakref.WeakSet[Token] = field(default_factory=weakref.WeakSet)


class LoadedModule:
    """A PKCS#11 library as initialised in this process: its lock, and its logged-in sessions.

    `generation` counts re-initialisations. A re-initialisation empties `logins`, so Token
    handles log in again on next use, and HSMSigner finds its key again whenever the session
    object it found the key on is no longer the current one.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        # Re-entrant so that a reconnect inside an operation can re-initialise under the lock.
        self.lock = threading.RLock()
        self.generation = 0
        self.logins: dict[str, Login] = {}
        # HMACs of PINs that logged in, so a later handle with a different PIN is refused even
        # though C_Login would answer CKR_USER_ALREADY_LOGGED_IN without checking it.
        self.pin_digests: dict[str, bytes] = {}
        # SoftHSM reads SOFTHSM2_CONF only in C_Initialize; other modules ignore it.
        self.softhsm_conf: str | None = None
        self._file_lock: IO[str] | None = None
        self._file_lock_depth = 0
        try:
            self.lib = pkcs11.lib(path)
        except PKCS11Error as exc:
            raise HSMError(f"cannot load PKCS#11 module {path}: {type(exc).__name__}") from exc
        # The library may have been initialised by this process's parent before fork() (or by
        # other code in this process): start from a clean C_Initialize either way.
        self._reinitialize_locked()

    def reinitialize(self) -> None:
        """C_Finalize and C_Initialize again: drops every session and handle of this process."""
        with self.lock:
            self._reinitialize_locked()

    @contextlib.contextmanager
    def across_processes(self) -> Iterator[None]:
        """Keep other processes out of C_Initialize and C_Login meanwhile (caller holds `lock`).

        SoftHSM rewrites its token.object file on every C_Login, and a process initialising or
        logging in at that moment reads half a file: the token goes missing, or C_Login fails
        with CKR_GENERAL_ERROR or CKR_USER_PIN_NOT_INITIALIZED (seen with workers forked
        together). An advisory lock next to SOFTHSM2_CONF orders them; modules without
        SOFTHSM2_CONF, or a configuration directory we cannot write, go without. Re-entrant.
        """
        if self._file_lock_depth == 0:
            self._file_lock = _acquire_file_lock(os.environ.get("SOFTHSM2_CONF"))
        self._file_lock_depth += 1
        try:
            yield
        finally:
            self._file_lock_depth -= 1
            if self._file_lock_depth == 0 and self._file_lock is not None:
                fcntl.flock(self._file_lock, fcntl.LOCK_UN)
                self._file_lock.close()
                self._file_lock = None

    def _reinitialize_locked(self) -> None:
        with self.across_processes():
            self._finalize_and_initialize()

    def _finalize_and_initialize(self) -> None:
        try:
            self.lib.finalize()
        except PKCS11Error:
            # Already finalised behind our back, or the module is in a bad state; C_Initialize
            # below is what matters.
            pass
        try:
            self.lib.initialize()
        except PKCS11Error as exc:
            raise HSMError(
                f"cannot initialise PKCS#11 module {self.path}: {type(exc).__name__}"
            ) from exc
        self.softhsm_conf = os.environ.get("SOFTHSM2_CONF")
        self.generation += 1
        self.logins.clear()
        self.pin_digests.clear()


_FILE_LOCK_TIMEOUT_SECONDS = 30.0


def _acquire_file_lock(softhsm_conf: str | None) -> IO[str] | None:
    if not softhsm_conf:
        return None
    try:
        lock_file = open(Path(softhsm_conf).with_suffix(".lock"), "a")
    except OSError:
        return None
    deadline = time.monotonic() + _FILE_LOCK_TIMEOUT_SECONDS
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock_file
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock_file.close()
                raise HSMError(
                    f"timed out waiting for the SoftHSM lock next to {softhsm_conf}"
                ) from None
            time.sleep(0.005)


_registry: dict[str, LoadedModule] = {}
_registry_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A thread of the parent may have held the lock at fork(); the child has only this thread.
    global _registry_lock
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def loaded_module(path: str) -> LoadedModule:
    """This process's state for the module at `path`, initialising the library on first use.

    If SOFTHSM2_CONF changed since the library was initialised, it is initialised again so that
    SoftHSM reads the new configuration (tests and `privca` point it at their own directories).
    """
    pid = os.getpid()
    with _registry_lock:
        module = _registry.get(path)
        if module is None or module.pid != pid:
            module = LoadedModule(path)
            _registry[path] = module
    if module.softhsm_conf != os.environ.get("SOFTHSM2_CONF"):
        with module.lock:
            if module.softhsm_conf != os.environ.get("SOFTHSM2_CONF"):
                module.reinitialize()
    return module


def existing_module(path: str) -> LoadedModule | None:
    """This process's state for the module at `path` if it was already loaded, else None."""
    with _registry_lock:
        module = _registry.get(path)
        return module if module is not None and module.pid == os.getpid() else None


def reinitialize(path: str) -> None:
    """Re-initialise the module at `path` in this process (SoftHSM then rereads its config)."""
    loaded_module(path).reinitialize()
