"""Account keys remembered per process, so a request signed with `kid` is verified without
reading the account first.

Only a hint: the database stays the truth. A request whose signature verifies under the
remembered key spends its nonce with one statement that also requires the account to be, right
then, `valid` and to hold a key with the remembered thumbprint (`SPEND_NONCE_FOR_ACCOUNT`). If
it is not (deactivated or revoked here or on another node, key rolled over), nothing is written:
the entry is dropped and the request takes the full path (read the account, verify, check the
status, spend), which gives the same answer and error as before. So a stale entry costs one
extra statement, never a wrong answer.

The remembered account is a transient copy, attached to no session: its `id`, `public_id`,
`directory`, `owner` and `created_at` never change; status and key are checked on every request
as above; contact and terms are read again (locked) by the requests that show or change them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from acme_server.jws import AccountKey
from acme_server.storage import AccountRow

DEFAULT_SIZE = 10_000


@dataclass(frozen=True)
class KnownAccount:
    account: AccountRow  # transient: never add it to a session or change it
    key: AccountKey


class AccountCache:
    """(directory, account public id) -> KnownAccount, at most `size` entries, oldest dropped
    first."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._entries: dict[tuple[str, str], KnownAccount] = {}
        self._lock = threading.Lock()

    def get(self, directory: str, public_id: str) -> KnownAccount | None:
        return self._entries.get((directory, public_id))

    def remember(self, account: AccountRow, key: AccountKey) -> None:
        copy = AccountRow(
            id=account.id,
            public_id=account.public_id,
            directory=account.directory,
            key_thumbprint=account.key_thumbprint,
            jwk=account.jwk,
            status=account.status,
            contact=account.contact,
            terms_agreed=account.terms_agreed,
            eab_key_id=account.eab_key_id,
            owner=account.owner,
            created_at=account.created_at,
            created_ip=account.created_ip,
        )
        with self._lock:
            self._entries.pop((account.directory, account.public_id), None)
            while len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[(account.directory, account.public_id)] = KnownAccount(copy, key)

    def forget(self, directory: str, public_id: str) -> None:
        with self._lock:
            self._entries.pop((directory, public_id), None)

    def __len__(self) -> int:
        return len(self._entries)
