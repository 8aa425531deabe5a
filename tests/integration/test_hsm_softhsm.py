"""SoftHSM token creation: idempotent, PINs never on a command line, throwaway PINs dead."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import exceptions as p11

import hsm.softhsm
from hsm import HSMError, PINIncorrect, Token, find_module
from hsm.softhsm import ensure_softhsm_token, softhsm_conf

pytestmark = pytest.mark.integration

PIN, SO_PIN = "user-pin-4821", "so-pin-9377"


@pytest.fixture(autouse=True)
def _restore_softhsm_conf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record softhsm2-util command lines and the throwaway PINs ensure_softhsm_token draws."""
    calls: dict[str, list] = {"argv": [], "throwaway": []}
    real_run, real_token_hex = subprocess.run, hsm.softhsm.secrets.token_hex

    def run(argv: list[str], *args: object, **kwargs: object) -> object:
        calls["argv"].append(list(argv))
        return real_run(argv, *args, **kwargs)

    def token_hex(n: int) -> str:
        value = real_token_hex(n)
        calls["throwaway"].append(value)
        return value

    monkeypatch.setattr(hsm.softhsm.subprocess, "run", run)
    monkeypatch.setattr(hsm.softhsm.secrets, "token_hex", token_hex)
    return calls


def assert_so_pin(so_pin: str) -> None:
    """Log in as security officer through python-pkcs11 (Token logs in as the user only)."""
    token = pkcs11.lib(find_module()).get_token(token_label="privca")
    token.open(rw=True, so_pin=so_pin).close()


def test_softhsm_conf_keeps_tokens_in_a_private_directory(tmp_path: Path) -> None:
    conf = softhsm_conf(tmp_path / "hsm")

    tokendir = tmp_path / "hsm" / "tokens"
    assert f"directories.tokendir = {tokendir}" in conf.read_text()
    assert stat.S_IMODE(tokendir.stat().st_mode) == 0o700
    assert softhsm_conf(tmp_path / "hsm") == conf


def test_real_pins_work_and_never_reach_a_command_line(
    tmp_path: Path, recorded: dict[str, list]
) -> None:
    conf = ensure_softhsm_token(tmp_path / "hsm", "privca", PIN, SO_PIN)

    assert os.environ["SOFTHSM2_CONF"] == str(conf)
    assert len(recorded["argv"]) == 1
    assert all(PIN not in arg and SO_PIN not in arg for arg in recorded["argv"][0])
    token = Token(find_module(), "privca", lambda: PIN)
    token.ping()
    token.close()
    assert_so_pin(SO_PIN)


def test_throwaway_pins_no_longer_open_the_token(tmp_path: Path, recorded: dict[str, list]) -> None:
    ensure_softhsm_token(tmp_path / "hsm", "privca", PIN, SO_PIN)
    throwaway_so_pin, throwaway_pin = recorded["throwaway"]
    assert throwaway_so_pin in recorded["argv"][0] and throwaway_pin in recorded["argv"][0]

    with pytest.raises(PINIncorrect):
        Token(find_module(), "privca", lambda: throwaway_pin).ping()
    with pytest.raises(p11.PinIncorrect):
        assert_so_pin(throwaway_so_pin)


def test_second_call_keeps_the_token_and_its_keys(
    tmp_path: Path, recorded: dict[str, list]
) -> None:
    first = ensure_softhsm_token(tmp_path / "hsm", "privca", PIN, SO_PIN)
    generated = Token(find_module(), "privca", lambda: PIN).generate_key("ec-p256", "root")

    second = ensure_softhsm_token(tmp_path / "hsm", "privca", PIN, SO_PIN)

    assert second == first
    assert len(recorded["argv"]) == 1  # softhsm2-util ran once
    found = Token(find_module(), "privca", lambda: PIN).find_signer("root")
    assert found.public_key == generated.public_key


def test_second_token_in_the_same_directory_leaves_the_first_alone(tmp_path: Path) -> None:
    ensure_softhsm_token(tmp_path / "hsm", "first", PIN, SO_PIN)
    signer = Token(find_module(), "first", lambda: PIN).generate_key("ec-p256", "root")

    ensure_softhsm_token(tmp_path / "hsm", "second", "other-pin-1", SO_PIN)

    Token(find_module(), "second", lambda: "other-pin-1").ping()
    assert signer.sign(b"still signs")


def test_switching_directories_switches_tokens(tmp_path: Path) -> None:
    ensure_softhsm_token(tmp_path / "a", "privca", PIN, SO_PIN)
    Token(find_module(), "privca", lambda: PIN).generate_key("ec-p256", "only-in-a")

    ensure_softhsm_token(tmp_path / "b", "privca", PIN, SO_PIN)

    assert not Token(find_module(), "privca", lambda: PIN).has_key("only-in-a")


def test_crash_before_pins_were_set_is_repaired_on_the_next_call(tmp_path: Path) -> None:
    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies between softhsm2-util and setting the PINs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hsm.softhsm, "_set_pins", crash)
        with pytest.raises(KeyboardInterrupt):
            ensure_softhsm_token(tmp_path / "hsm", "privca", PIN, SO_PIN)

    ensure_softhsm_token(tmp_path / "hsm", "privca", PIN, SO_PIN)

    Token(find_module(), "privca", lambda: PIN).ping()


def test_short_pins_are_refused_before_anything_is_created(tmp_path: Path) -> None:
    with pytest.raises(HSMError, match="4 to 255"):
        ensure_softhsm_token(tmp_path / "hsm", "privca", "123", SO_PIN)
    assert not (tmp_path / "hsm").exists()


def test_changing_softhsm2_conf_is_seen_on_the_next_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_a = ensure_softhsm_token(tmp_path / "a", "privca", PIN, SO_PIN)
    token = Token(find_module(), "privca", lambda: PIN)
    token.generate_key("ec-p256", "only-in-a")
    conf_b = ensure_softhsm_token(tmp_path / "b", "privca", PIN, SO_PIN)
    assert not token.has_key("only-in-a")

    # Set by hand, as `privca serve` does from its configuration, without ensure_softhsm_token.
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf_a))
    assert token.has_key("only-in-a")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf_b))
    assert not token.has_key("only-in-a")
