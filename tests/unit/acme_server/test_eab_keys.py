"""EAB HMAC keys are shown to operators as base64url text that they paste into a client's command
line: that text must never start with "-" (argparse would take it for an option)."""

from __future__ import annotations

import pytest

from acme_server import eab
from acme_server.jws import b64encode


def test_a_key_whose_text_would_start_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch):
    dash_first = bytes([0xF8]) + bytes(31)  # top six bits 62: "-" in base64url
    fine = bytes([0x10]) + bytes(31)
    draws = iter([dash_first, dash_first, fine])
    monkeypatch.setattr(eab.os, "urandom", lambda n: next(draws))
    assert b64encode(dash_first).startswith("-")
    key = eab._new_mac_key()
    assert key == fine and not b64encode(key).startswith("-")


def test_keys_are_32_random_bytes():
    keys = {eab._new_mac_key() for _ in range(64)}
    assert len(keys) == 64 and all(len(k) == 32 for k in keys)
    assert not any(b64encode(k).startswith("-") for k in keys)
