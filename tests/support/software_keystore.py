"""A KeyStore of software keys for `ca` unit tests (hsm/ itself is always tested on SoftHSM)."""

from __future__ import annotations

from tests.support.software_signer import SoftwareSigner


class SoftwareKeyStore:
    def __init__(self) -> None:
        self.keys: dict[str, SoftwareSigner] = {}
        self.sign_calls = 0

    def has_key(self, label: str) -> bool:
        return label in self.keys

    def generate_key(self, key_type: str, label: str) -> SoftwareSigner:
        if label in self.keys:
            raise ValueError(f"key {label} exists")
        signer = SoftwareSigner(key_type, label)
        self.keys[label] = signer
        return signer

    def find_signer(self, label: str) -> SoftwareSigner:
        return self.keys[label]

    def ping(self) -> None:
        return None
