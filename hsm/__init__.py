"""PKCS#11 keys and signing. Knows tokens, sessions and keys; never what a certificate is."""

from hsm import errors, softhsm
from hsm.errors import (
    HSMError,
    KeyExists,
    KeyMismatch,
    KeyNotExportable,
    KeyNotFound,
    PINIncorrect,
    TokenNotFound,
)
from hsm.key_types import KEY_TYPES
from hsm.module import find_module
from hsm.pkcs11_signer import HSMSigner
from hsm.public_key import verify_matches
from hsm.signer import Signer
from hsm.token import Token

__all__ = [
    "KEY_TYPES",
    "HSMError",
    "HSMSigner",
    "KeyExists",
    "KeyMismatch",
    "KeyNotExportable",
    "KeyNotFound",
    "PINIncorrect",
    "Signer",
    "Token",
    "TokenNotFound",
    "errors",
    "find_module",
    "softhsm",
    "verify_matches",
]
