"""Reconnect after the session or the token went away: reopen, find the key again, retry once."""

from __future__ import annotations

import pkcs11
import pytest

from hsm import HSMError, Token, TokenNotFound
from hsm.module import existing_module
from hsm.softhsm import softhsm_conf
from tests.integration.hsm_fixtures import SoftHSMToken, softhsm_token  # noqa: F401
from tests.integration.test_hsm_token import verify

pytestmark = pytest.mark.integration

# A python-pkcs11 search started on a dead session reports C_FindObjectsFinal's failure from
# __del__ ("Exception ignored"); hsm frees it under the module lock, the message is only noise.
ignore_search_finalizer = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)


def current_session(softhsm_token: SoftHSMToken) -> pkcs11.Session:  # noqa: F811
    module = existing_module(softhsm_token.module_path)
    assert module is not None
    return module.logins[softhsm_token.label].session


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_sign_after_the_session_was_closed_behind_its_back(
    softhsm_token: SoftHSMToken,  # noqa: F811
    key_type: str,
) -> None:
    signer = softhsm_token.token().generate_key(key_type, "issuing")
    verify(signer, signer.sign(b"before"), b"before")
    lost = current_session(softhsm_token)

    lost.close()  # C_Logout + C_CloseSession: the next C_SignInit gets CKR_SESSION_HANDLE_INVALID

    verify(signer, signer.sign(b"after"), b"after")
    assert current_session(softhsm_token) is not lost


def test_sign_after_the_library_was_finalized_behind_its_back(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    signer = softhsm_token.token().generate_key("ec-p384", "issuing")
    verify(signer, signer.sign(b"before"), b"before")

    pkcs11.lib(softhsm_token.module_path).finalize()  # CKR_CRYPTOKI_NOT_INITIALIZED from now on

    verify(signer, signer.sign(b"after"), b"after")


@ignore_search_finalizer
def test_ping_reconnects_after_a_lost_session(softhsm_token: SoftHSMToken) -> None:  # noqa: F811
    token = softhsm_token.token()
    token.ping()
    current_session(softhsm_token).close()

    token.ping()


@ignore_search_finalizer
def test_second_consecutive_failure_surfaces_as_hsm_error(
    softhsm_token: SoftHSMToken,  # noqa: F811
) -> None:
    signer = softhsm_token.token().generate_key("ec-p256", "issuing")
    signer.sign(b"warm up")
    logins = []
    real_open = Token._open_logged_in

    def open_then_lose_the_session(self: Token, *args: object) -> object:
        login = real_open(self, *args)  # type: ignore[arg-type]
        logins.append(login)
        login.session.close()  # every new session is dead before it is used
        return login

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Token, "_open_logged_in", open_then_lose_the_session)
        current_session(softhsm_token).close()

        with pytest.raises(HSMError, match="again after reconnecting"):
            signer.sign(b"fails twice")
        assert len(logins) == 1  # one reconnect, not a loop

    verify(signer, signer.sign(b"recovered"), b"recovered")


def test_token_that_disappears_raises_and_is_found_again_when_back(
    softhsm_token: SoftHSMToken,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path,
) -> None:
    signer = softhsm_token.token().generate_key("ec-p256", "issuing")
    signer.sign(b"before")
    # Pull the token: the library comes back up with a configuration that has no tokens.
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_conf(tmp_path / "empty")))
    pkcs11.lib(softhsm_token.module_path).finalize()

    with pytest.raises(TokenNotFound):
        signer.sign(b"while gone")

    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_token.conf_path))
    verify(signer, signer.sign(b"back"), b"back")
