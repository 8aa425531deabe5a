"""Core error types. They say what went wrong; each front end decides how to say it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Violation:
    """One reason a request was refused, tied to the identifier it concerns (if any)."""

    detail: str
    identifier: str | None = None


class CoreError(Exception):
    """Base of every error the core raises on purpose; `safe_detail` may be shown to a client."""

    kind: ClassVar[str] = "internal"

    def __init__(
        self,
        safe_detail: str,
        *,
        per_identifier: Sequence[Violation] = (),
        retry_after: int | None = None,
    ) -> None:
        super().__init__(safe_detail)
        self.safe_detail = safe_detail
        self.per_identifier = tuple(per_identifier)
        self.retry_after = retry_after


class BadRequest(CoreError):
    kind = "bad_request"


class BadCSR(CoreError):
    kind = "bad_csr"


class BadPublicKey(CoreError):
    kind = "bad_public_key"


class PolicyDenied(CoreError):
    kind = "policy_denied"


class UnknownProfile(CoreError):
    kind = "unknown_profile"


class UnknownIssuer(CoreError):
    kind = "unknown_issuer"


class NotFound(CoreError):
    kind = "not_found"


class AlreadyRevoked(CoreError):
    kind = "already_revoked"


class Unauthorized(CoreError):
    kind = "unauthorized"


class Forbidden(CoreError):
    kind = "forbidden"


class Conflict(CoreError):
    kind = "conflict"


class RateLimited(CoreError):
    kind = "rate_limited"


class LintFailed(CoreError):
    kind = "lint_failed"


class Unavailable(CoreError):
    kind = "unavailable"


class SignatureInvalid(CoreError):
    """The token returned a signature that does not verify (a fault on our side)."""

    kind = "internal"


class ConfigError(Exception):
    """Invalid configuration; the message names the key and the problem."""
