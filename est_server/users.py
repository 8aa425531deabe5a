"""EST Basic credentials: create, list and delete (shared by `privca est user` and the admin API).

A password is shown once, when it is made, and stored only as an argon2id hash. Each change is
an audit entry in the same transaction.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from ca.errors import BadRequest, Conflict, NotFound
from est_server import storage
from est_server.auth import new_password, password_hasher
from est_server.config import ESTSettings

if TYPE_CHECKING:
    from ca.core import CACore

# RFC 7617 §2: the user-id cannot hold a colon; we also keep it printable and log-safe.
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
MIN_PASSWORD = 12


def create_user(
    core: CACore,
    settings: ESTSettings,
    username: str,
    *,
    label: str | None,
    password: str | None,
    actor: str,
    channel: str,
) -> tuple[storage.ESTUser, str]:
    """A new credential; returns it and its password (generated when `password` is None)."""
    if not USERNAME.fullmatch(username):
        raise BadRequest(
            "a username is 1 to 128 letters, digits and . _ @ + - (starting with a letter or digit)"
        )
    if label is not None and label not in settings.labels:
        known = ", ".join(sorted(settings.labels)) or "none configured"
        raise BadRequest(f'no EST label named "{label}" (known: {known})')
    if password is None:
        password = new_password()
    elif len(password) < MIN_PASSWORD:
        raise BadRequest(f"a password has at least {MIN_PASSWORD} characters")
    password_hash = password_hasher(settings.password_hash).hash(password)
    try:
        with core.database.write() as session:
            user = storage.insert_user(session, username, label, password_hash, actor, core.now())
            core.audit(
                session,
                actor=actor,
                channel=channel,
                action="est_user_created",
                object=f"est_user:{username}",
                details={"username": username, "label": label},
            )
    except IntegrityError:
        raise Conflict(f'an EST user named "{username}" exists') from None
    return user, password


def delete_user(core: CACore, username: str, *, actor: str, channel: str) -> storage.ESTUser:
    with core.database.write() as session:
        user = storage.delete_user(session, username)
        if user is None:
            raise NotFound(f'no EST user named "{username}"')
        core.audit(
            session,
            actor=actor,
            channel=channel,
            action="est_user_deleted",
            object=f"est_user:{username}",
            details={"username": username, "label": user.label},
        )
    return user


def list_users(core: CACore) -> list[storage.ESTUser]:
    with core.database.read() as session:
        return storage.list_users(session)
