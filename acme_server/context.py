"""What every ACME operation needs: the core, the validated settings, nonces and resource URLs,
plus the JSON forms of accounts, orders, authorizations and challenges (RFC 8555 §7.1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from acme_server.account_cache import AccountCache
from acme_server.nonces import NonceService
from acme_server.settings import ACMESettings, DirectorySettings
from acme_server.storage import AccountRow, AuthorizationRow, ChallengeRow, OrderRow

if TYPE_CHECKING:
    from ca.core import CACore
    from ca.jobs import Job


def rfc3339(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ACMEContext:
    core: CACore
    settings: ACMESettings
    nonces: NonceService
    # Account keys this process has verified requests with (a hint: see account_cache).
    accounts: AccountCache = field(default_factory=AccountCache)
    # With immediate validation, the lease holder of the jobs this process's validator threads
    # run, and the call that hands one to them after the commit.
    validation_holder: str | None = None
    kick_validation: Callable[[Job], None] = field(default=lambda job: None)

    @property
    def base(self) -> str:
        return self.core.urls.base

    def directory(self, name: str) -> DirectorySettings:
        return self.settings.directories[name]

    def url(self, directory: str, *parts: str) -> str:
        prefix = self.settings.directories[directory].prefix
        return self.base + prefix + "/" + "/".join(parts)

    # -- resource URLs ----------------------------------------------------------------------

    def account_url(self, account: AccountRow) -> str:
        return self.url(account.directory, "acct", account.public_id)

    def order_url(self, directory: str, order: OrderRow) -> str:
        return self.url(directory, "order", order.public_id)

    def authz_url(self, directory: str, authz: AuthorizationRow) -> str:
        return self.url(directory, "authz", authz.public_id)

    def challenge_url(self, directory: str, challenge: ChallengeRow) -> str:
        return self.url(directory, "chall", challenge.public_id)

    def certificate_url(self, directory: str, order: OrderRow) -> str:
        return self.url(directory, "cert", order.public_id)

    # -- JSON forms -------------------------------------------------------------------------

    def account_json(self, account: AccountRow) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": account.status,
            "contact": json.loads(account.contact),
            "orders": self.account_url(account) + "/orders",
            "createdAt": rfc3339(account.created_at),
        }
        if account.terms_agreed:
            body["termsOfServiceAgreed"] = True
        return body

    def challenge_json(self, directory: str, challenge: ChallengeRow) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": challenge.type,
            "url": self.challenge_url(directory, challenge),
            "status": challenge.status,
            "token": challenge.token,
        }
        if challenge.validated_at is not None:
            body["validated"] = rfc3339(challenge.validated_at)
        if challenge.error:
            body["error"] = json.loads(challenge.error)
        return body


def authorization_status(authz: AuthorizationRow, now: datetime) -> str:
    """RFC 8555 §7.1.6: a pending or valid authorization past its expiry is expired."""
    if authz.status in ("pending", "valid") and authz.expires_at <= now:
        return "expired"
    return authz.status


def order_status(order: OrderRow, now: datetime) -> str:
    """An order still pending or ready after it expires is invalid (RFC 8555 §7.1.6)."""
    if order.status in ("pending", "ready") and order.expires_at <= now:
        return "invalid"
    return order.status
