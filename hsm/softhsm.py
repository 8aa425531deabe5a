"""SoftHSM v2 tokens for development, tests and small installations.

A token is created with `softhsm2-util`, which takes PINs only on its command line or from a
terminal. Command lines are visible to every local user (/proc/<pid>/cmdline) and driving the
terminal prompts through a pty breaks whenever their wording changes, so the token is
initialised with random throwaway PINs and both PINs are then set through PKCS#11 itself
(C_InitPIN and C_SetPIN as the security officer), which python-pkcs11 offers. The throwaway PINs
live for one process run and guard nothing: the token directory is 0700, and a marker file
records an unfinished initialisation so a crash in between is repaired on the next call.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from pkcs11 import TokenFlag
from pkcs11 import exceptions as p11
from pkcs11.types import Token as PKCS11Token

from hsm.errors import HSMError
from hsm.module import LoadedModule, find_module, loaded_module

_LOCK_TIMEOUT_SECONDS = 60.0
# SoftHSM accepts PINs of 4 to 255 bytes.
_PIN_LENGTHS = range(4, 256)


def softhsm_conf(directory: Path) -> Path:
    """Write `directory`/softhsm2.conf keeping tokens in `directory`/tokens (mode 0700)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700, exist_ok=True)
    tokens.chmod(0o700)
    conf = directory / "softhsm2.conf"
    text = (
        f"directories.tokendir = {tokens.resolve()}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
        "slots.mechanisms = ALL\n"
        # privca re-initialises PKCS#11 itself in every child after fork().
        "library.reset_on_fork = false\n"
    )
    if not conf.is_file() or conf.read_text() != text:
        partial = conf.with_name(conf.name + ".tmp")
        partial.write_text(text)
        partial.replace(conf)
    return conf


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    # Serialises token creation between processes that share the directory.
    with open(directory / ".privca-softhsm.lock", "a") as lock_file:
        deadline = time.monotonic() + _LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HSMError(f"timed out waiting for the lock on {directory}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _initialised_token(module: LoadedModule, label: str) -> PKCS11Token | None:
    try:
        tokens = [
            token
            for token in module.lib.get_tokens(token_label=label)
            if token.flags & TokenFlag.TOKEN_INITIALIZED
        ]
    except p11.PKCS11Error as exc:
        raise HSMError(f"cannot list SoftHSM tokens: {type(exc).__name__}") from exc
    if len(tokens) > 1:
        raise HSMError(f"more than one SoftHSM token is labelled {label!r}")
    return tokens[0] if tokens else None


def _softhsm2_util(*arguments: str, secrets_to_hide: tuple[str, ...] = ()) -> None:
    executable = shutil.which("softhsm2-util")
    if executable is None:
        raise HSMError("softhsm2-util not found on PATH; install softhsm2")
    result = subprocess.run(
        [executable, *arguments], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        for secret in secrets_to_hide:
            detail = detail.replace(secret, "***")
        raise HSMError(f"softhsm2-util {arguments[0]} failed: {detail}")


def _set_pins(token: PKCS11Token, current_so_pin: str, pin: str, so_pin: str) -> None:
    try:
        session = token.open(rw=True, so_pin=current_so_pin)
        try:
            session.init_pin(pin)
            session.set_pin(current_so_pin, so_pin)
        finally:
            session.close()
    except p11.PKCS11Error as exc:
        raise HSMError(f"cannot set the PINs of SoftHSM token: {type(exc).__name__}") from exc


def ensure_softhsm_token(
    directory: Path, label: str, pin: str, so_pin: str, *, module: str | None = None
) -> Path:
    """Make sure a SoftHSM token `label` with these PINs exists under `directory`; idempotent.

    Sets SOFTHSM2_CONF in os.environ to `directory`'s softhsm2.conf (returned); this process's
    SoftHSM is initialised again when that changes what it reads (see hsm.module.loaded_module),
    so Token handles reconnect to the right tokens. An existing token is left as it is (its keys
    and PINs too).
    """
    if any(len(value.encode("utf-8")) not in _PIN_LENGTHS for value in (pin, so_pin)):
        raise HSMError("SoftHSM PINs must be 4 to 255 bytes long")
    directory = Path(directory)
    conf = softhsm_conf(directory)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    loaded = loaded_module(find_module(module))
    marker = directory / f".initialising-{hashlib.sha256(label.encode()).hexdigest()[:16]}"
    with _directory_lock(directory), loaded.lock:
        token = _initialised_token(loaded, label)
        if token is None:
            # Another process may have created it since this one initialised the library.
            loaded.reinitialize()
            token = _initialised_token(loaded, label)
        if token is not None and marker.exists():
            # A crash between creation and setting the PINs: nobody knows its PINs, so it can
            # hold no keys. Start it again.
            _softhsm2_util("--delete-token", "--token", label)
            loaded.reinitialize()
            token = None
        if token is None:
            marker.touch(mode=0o600)
            throwaway_so_pin, throwaway_pin = secrets.token_hex(16), secrets.token_hex(16)
            _softhsm2_util(
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                throwaway_so_pin,
                "--pin",
                throwaway_pin,
                secrets_to_hide=(throwaway_so_pin, throwaway_pin),
            )
            loaded.reinitialize()
            token = _initialised_token(loaded, label)
            if token is None:
                raise HSMError(f"SoftHSM token {label!r} was created but cannot be found")
            _set_pins(token, throwaway_so_pin, pin, so_pin)
            marker.unlink()
    return conf
