"""Finding the PKCS#11 module."""

from __future__ import annotations

from pathlib import Path

import pytest

import hsm.module
from hsm import HSMError, find_module


def test_explicit_module_path_is_used(tmp_path: Path) -> None:
    module = tmp_path / "libvendor-pkcs11.so"
    module.write_bytes(b"")

    assert find_module(str(module)) == str(module)


def test_missing_explicit_module_is_an_error_not_a_fallback_to_softhsm(tmp_path: Path) -> None:
    with pytest.raises(HSMError, match="does not exist"):
        find_module(str(tmp_path / "missing.so"))


def test_softhsm_is_found_in_the_usual_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = tmp_path / "aarch64-linux-gnu" / "libsofthsm2.so"
    installed.parent.mkdir()
    installed.write_bytes(b"")
    monkeypatch.setattr(
        hsm.module, "SOFTHSM_CANDIDATES", (str(tmp_path / "absent.so"), str(installed))
    )

    assert find_module() == str(installed)


def test_no_module_anywhere_says_what_was_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hsm.module, "SOFTHSM_CANDIDATES", (str(tmp_path / "absent.so"),))

    with pytest.raises(HSMError, match=r"absent\.so.*install softhsm2"):
        find_module()


def test_debian_and_multiarch_locations_are_searched() -> None:
    for path in (
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ):
        assert path in hsm.module.SOFTHSM_CANDIDATES
