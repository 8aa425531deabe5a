"""Errors the hsm package raises. Messages name tokens, labels and modules, never a PIN."""

from __future__ import annotations


class HSMError(Exception):
    """A PKCS#11 module, token or key could not do what was asked."""


class TokenNotFound(HSMError):
    """No initialised token carries the configured label."""


class PINIncorrect(HSMError):
    """The token rejected the user PIN (or its length)."""


class KeyNotFound(HSMError):
    """No private key with the given label (and id) is in the token."""


class KeyExists(HSMError):
    """A private key with that label (or id) already exists; keys are never overwritten."""


class KeyMismatch(HSMError):
    """The token key's public half differs from the public key it was checked against."""


class KeyNotExportable(HSMError):
    """Something asked for private key material, which never leaves the token."""
