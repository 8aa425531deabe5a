"""A PKCS#11 token as one process uses it: login, key generation and lookup, reconnect.

A process keeps one logged-in read/write session per token, shared by every `Token` handle on
that token and used under the module's lock (see hsm.module for why). The session is opened
lazily and again after fork() or after the token went away; an operation that fails because the
session or token is gone is retried once on a fresh session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

from hsm.errors import HSMError, KeyExists, KeyNotFound, PINIncorrect, TokenNotFound
from hsm.key_types import KeySpec, key_spec, key_spec_for
from hsm.module import LoadedModule, Login, existing_module, loaded_module
from hsm.pkcs11_signer import HSMSigner, signing_mechanism
from hsm.public_key import public_key_from_attributes

if TYPE_CHECKING:
    from pkcs11 import Session
    from pkcs11.types import PrivateKey, PublicKey
    from pkcs11.types import Token as PKCS11Token

T = TypeVar("T")

# Errors after which the session (not the whole library) must be replaced. Key and object
# handles can outlive their meaning too, so those re-find the key on a new session.
_SESSION_GONE: tuple[type[p11.PKCS11Error], ...] = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.KeyHandleInvalid,
    p11.ObjectHandleInvalid,
)
# Errors after which the library must be finalised and initialised again.
_MODULE_GONE: tuple[type[p11.PKCS11Error], ...] = (
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.GeneralError,
)
_PIN_REJECTED = (p11.PinIncorrect, p11.PinLenRange, p11.PinInvalid)
# Pauses (seconds) before each new attempt to find the token and log in; bounded, ~0.4 s in all.
_LOG_IN_RETRY_DELAYS = (0.0, 0.02, 0.1, 0.3)

# Keys PINs are compared under; random per process, never stored.
_PIN_DIGEST_KEY = secrets.token_bytes(32)

_KEY_ATTRIBUTES = {
    "token": Attribute.TOKEN,
    "private": Attribute.PRIVATE,
    "sensitive": Attribute.SENSITIVE,
    "extractable": Attribute.EXTRACTABLE,
    "always_sensitive": Attribute.ALWAYS_SENSITIVE,
    "never_extractable": Attribute.NEVER_EXTRACTABLE,
}


def _needs_reinitialize(exc: p11.PKCS11Error) -> bool:
    # python-pkcs11 maps CKR_CRYPTOKI_NOT_INITIALIZED to a bare PKCS11Error with this text.
    return isinstance(exc, _MODULE_GONE) or (
        type(exc) is p11.PKCS11Error and "not initialized" in str(exc)
    )


def _is_connection_loss(exc: p11.PKCS11Error) -> bool:
    return isinstance(exc, _SESSION_GONE) or _needs_reinitialize(exc)


def _describe(exc: p11.PKCS11Error) -> str:
    # Class names (SessionHandleInvalid, GeneralError, …) are the CKR_ codes; never a PIN.
    return type(exc).__name__


def _release_operation(exc: p11.PKCS11Error) -> None:
    # A python-pkcs11 search whose C_FindObjectsInit failed calls C_FindObjectsFinal when it is
    # garbage-collected, and the traceback keeps it alive. Dropping the traceback here frees it
    # while the module lock is still held: SoftHSM runs without locks of its own.
    exc.__traceback__ = None


def _pin_digest(pin: str) -> bytes:
    return hmac.new(_PIN_DIGEST_KEY, pin.encode("utf-8"), hashlib.sha256).digest()


class Token:
    """A handle on one token of a PKCS#11 module, usable from any thread and across fork().

    `pin` is called when the handle logs in (lazily, on first use) and never stored; only a keyed
    digest is kept so that a second handle with a different PIN is refused.
    """

    def __init__(self, module_path: str, token_label: str, pin: Callable[[], str]) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self._pin = pin

    def __repr__(self) -> str:
        return f"Token(module={self.module_path!r}, token={self.token_label!r})"

    def run(self, operation: Callable[[Session], T]) -> T:
        """Run `operation(session)` under the module lock; on a lost session reconnect, retry once.

        For this package's own use (HSMSigner); `operation` must be safe to run twice. Raises
        HSMError (or a subclass) for every PKCS#11 failure.
        """
        module = loaded_module(self.module_path)
        with module.lock:
            session = self._session(module)
            try:
                return operation(session)
            except p11.PKCS11Error as exc:
                _release_operation(exc)
                if not _is_connection_loss(exc):
                    raise self._error(exc) from exc
                self._discard(module, exc)
            session = self._session(module)
            try:
                return operation(session)
            except p11.PKCS11Error as exc:
                _release_operation(exc)
                raise HSMError(
                    f"token {self.token_label!r}: {_describe(exc)} again after reconnecting"
                ) from exc

    def _error(self, exc: p11.PKCS11Error) -> HSMError:
        return HSMError(f"token {self.token_label!r}: PKCS#11 error {_describe(exc)}")

    # Sessions -------------------------------------------------------------------------------

    def _session(self, module: LoadedModule) -> Session:
        login = module.logins.get(self.token_label)
        if login is None:
            login = self._log_in(module)
            module.logins[self.token_label] = login
        elif self not in login.handles:
            # Another handle logged this process in; C_Login would not check our PIN, so we do.
            self._check_pin(module)
        login.handles.add(self)
        return login.session

    def _check_pin(self, module: LoadedModule) -> None:
        expected = module.pin_digests.get(self.token_label)
        if expected is not None and not hmac.compare_digest(expected, _pin_digest(self._pin())):
            raise PINIncorrect(f"token {self.token_label!r}: the user PIN was rejected")

    def _log_in(self, module: LoadedModule) -> Login:
        last: p11.PKCS11Error | None = None
        for delay in _LOG_IN_RETRY_DELAYS:
            if last is not None:
                # A token created (or a SoftHSM config changed) after C_Initialize is seen only
                # after initialising again. SoftHSM also rewrites token.object on every C_Login,
                # so a process reading it at that moment (one outside LoadedModule's file lock)
                # finds the token missing or gets CKR_GENERAL_ERROR or
                # CKR_USER_PIN_NOT_INITIALIZED: initialise again after a short pause.
                time.sleep(delay)
                module.reinitialize()
            try:
                with module.across_processes():
                    pkcs11_token = module.lib.get_token(token_label=self.token_label)
                    return self._open_logged_in(module, pkcs11_token)
            except p11.MultipleTokensReturned:
                raise HSMError(
                    f"more than one token is labelled {self.token_label!r} in {module.path}"
                ) from None
            except (p11.NoSuchToken, p11.UserPinNotInitialized) as exc:
                last = exc
            except p11.PKCS11Error as exc:
                if not _is_connection_loss(exc):
                    raise self._error(exc) from exc
                last = exc
        if isinstance(last, p11.NoSuchToken):
            raise TokenNotFound(
                f"no initialised token labelled {self.token_label!r} in {module.path}"
            )
        if isinstance(last, p11.UserPinNotInitialized):
            raise HSMError(f"token {self.token_label!r}: no user PIN is set") from None
        raise HSMError(
            f"token {self.token_label!r}: cannot log in: {_describe(last)}"  # type: ignore[arg-type]
        ) from last

    def _open_logged_in(self, module: LoadedModule, pkcs11_token: PKCS11Token) -> Login:
        """C_OpenSession and C_Login; connection-loss errors come out raw for _log_in to retry."""
        pin = self._pin()
        try:
            session = pkcs11_token.open(rw=True, user_pin=pin)
        except _PIN_REJECTED:
            raise PINIncorrect(f"token {self.token_label!r}: the user PIN was rejected") from None
        except p11.PinLocked:
            raise HSMError(f"token {self.token_label!r}: the user PIN is locked") from None
        except p11.UserAlreadyLoggedIn:
            # This process is still logged in through a session we gave up on; a new session
            # shares that login, so the PIN is checked against the one that logged in.
            digest = _pin_digest(pin)
            if not hmac.compare_digest(module.pin_digests.get(self.token_label, digest), digest):
                raise PINIncorrect(
                    f"token {self.token_label!r}: the user PIN was rejected"
                ) from None
            session = pkcs11_token.open(rw=True)
        module.pin_digests[self.token_label] = _pin_digest(pin)
        return Login(session, pkcs11_token, weakref.WeakSet())

    def _discard(self, module: LoadedModule, exc: p11.PKCS11Error) -> None:
        if _needs_reinitialize(exc):
            module.reinitialize()
            return
        login = module.logins.pop(self.token_label, None)
        if login is not None and not isinstance(exc, (p11.SessionHandleInvalid, p11.SessionClosed)):
            # The session itself still works; close it rather than leak it. A dead handle is
            # never closed: its number may already belong to another session.
            try:
                login.session.close()
            except p11.PKCS11Error:
                pass

    def close(self) -> None:
        """Let go of the token; the process logs out when its last handle on the token closes."""
        module = existing_module(self.module_path)
        if module is None:
            return
        with module.lock:
            login = module.logins.get(self.token_label)
            if login is None or self not in login.handles:
                return
            login.handles.discard(self)
            if not login.handles:
                del module.logins[self.token_label]
                try:
                    login.session.close()
                except p11.PKCS11Error:
                    pass

    # Keys -----------------------------------------------------------------------------------

    def find_private_key(self, session: Session, label: str, key_id: bytes | None) -> PrivateKey:
        """The private key labelled `label` (and `key_id`); KeyNotFound, HSMError if several."""
        template: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.LABEL: label,
        }
        if key_id is not None:
            template[Attribute.ID] = key_id
        keys = list(session.get_objects(template))
        if not keys:
            with_id = f" with id {key_id.hex()}" if key_id is not None else ""
            raise KeyNotFound(
                f"no private key labelled {label!r}{with_id} in token {self.token_label!r}"
            )
        if len(keys) > 1:
            raise HSMError(
                f"{len(keys)} private keys are labelled {label!r} in token "
                f"{self.token_label!r}; give the key id"
            )
        return keys[0]  # type: ignore[return-value]

    def _private_keys(self, session: Session, attribute: Attribute, value: object) -> list[Any]:
        return list(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, attribute: value})
        )

    def generate_key(self, key_type: str, label: str, key_id: bytes | None = None) -> HSMSigner:
        """Generate a sensitive, non-extractable key pair in the token and return its signer.

        `key_type` is one of hsm.key_types.KEY_TYPES; the key id defaults to 16 random bytes.
        Raises KeyExists if a private key with this label (or id) is already there.
        """
        spec = key_spec(key_type)
        if not label:
            raise HSMError("a key label is required")
        key_id = key_id if key_id is not None else secrets.token_bytes(16)

        def generate(session: Session) -> HSMSigner:
            if self._private_keys(session, Attribute.LABEL, label):
                raise KeyExists(f"token {self.token_label!r} already has a key labelled {label!r}")
            if self._private_keys(session, Attribute.ID, key_id):
                raise KeyExists(
                    f"token {self.token_label!r} already has a key with id {key_id.hex()}"
                )
            self._require_mechanisms(session, spec)
            public, _ = session.generate_keypair(
                spec.pkcs11_key_type,
                spec.rsa_bits,
                store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                mechanism=spec.generate_mechanism,
                public_template=self._public_template(spec, label, key_id),
                private_template=self._private_template(label, key_id),
            )
            return self._signer(spec, label, key_id, public)

        return self.run(generate)

    @staticmethod
    def _public_template(spec: KeySpec, label: str, key_id: bytes) -> dict[Attribute, Any]:
        template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
        }
        if spec.rsa_bits is not None:
            template[Attribute.MODULUS_BITS] = spec.rsa_bits
            template[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
        else:
            template[Attribute.EC_PARAMS] = spec.ec_params
        return template

    @staticmethod
    def _private_template(label: str, key_id: bytes) -> dict[Attribute, Any]:
        # Set explicitly rather than trusting module defaults: ARCHITECTURE requires CA keys to
        # be generated in the token and never exportable.
        return {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
        }

    def _require_mechanisms(self, session: Session, spec: KeySpec) -> None:
        offered = session.token.slot.get_mechanisms()
        for mechanism in (spec.generate_mechanism, signing_mechanism(spec)):
            if mechanism not in offered:
                raise HSMError(
                    f"token {self.token_label!r} does not offer {mechanism.name}, "
                    f"needed for {spec.name} keys"
                )

    def _signer(
        self, spec: KeySpec, label: str, key_id: bytes, public: PublicKey | PrivateKey
    ) -> HSMSigner:
        if spec.rsa_bits is not None:
            attributes = public.get_attributes([Attribute.MODULUS, Attribute.PUBLIC_EXPONENT])
            public_key = public_key_from_attributes(
                spec,
                modulus=attributes[Attribute.MODULUS],
                public_exponent=attributes[Attribute.PUBLIC_EXPONENT],
            )
        else:
            public_key = public_key_from_attributes(spec, ec_point=public[Attribute.EC_POINT])
        return HSMSigner(self, spec, label, key_id, public_key)

    def find_signer(self, label: str, key_id: bytes | None = None) -> HSMSigner:
        """The signer for the private key labelled `label` (and `key_id`); KeyNotFound if absent."""

        def find(session: Session) -> HSMSigner:
            private = self.find_private_key(session, label, key_id)
            found_id = private[Attribute.ID]
            key_type = KeyType(private[Attribute.KEY_TYPE])
            publics = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: found_id}
                )
            )
            # RSA private key objects carry the modulus and exponent too; EC ones do not.
            public = publics[0] if len(publics) == 1 else private
            if key_type == KeyType.RSA:
                bits = int.from_bytes(public[Attribute.MODULUS], "big").bit_length()
                spec = key_spec_for(key_type, None, bits)
            else:
                if public is private:
                    raise HSMError(
                        f"token {self.token_label!r} has no public key object for {label!r}"
                    )
                spec = key_spec_for(key_type, private[Attribute.EC_PARAMS], None)
            return self._signer(spec, label, bytes(found_id), public)

        return self.run(find)

    def has_key(self, label: str) -> bool:
        """Whether a private key labelled `label` is in the token."""
        return self.run(lambda session: bool(self._private_keys(session, Attribute.LABEL, label)))

    def key_attributes(self, label: str) -> dict[str, bool]:
        """The protection attributes of the private key: token, private, sensitive, extractable,
        always_sensitive, never_extractable (read back from the token, for checks and diagnostics).
        """

        def read(session: Session) -> dict[str, bool]:
            private = self.find_private_key(session, label, None)
            values = private.get_attributes(list(_KEY_ATTRIBUTES.values()))
            return {name: bool(values[attribute]) for name, attribute in _KEY_ATTRIBUTES.items()}

        return self.run(read)

    def ping(self) -> None:
        """Raise HSMError unless the token answers on a logged-in session (for /readyz)."""
        self.run(
            lambda session: list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: "privca-ping"}
                )
            )
        )
