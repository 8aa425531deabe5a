"""The one request every channel turns into before asking the core for a certificate."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

IDENTIFIER_TYPES = ("dns", "ip", "email", "uri")


@dataclass(frozen=True)
class Identifier:
    """A subject alternative name: type is one of dns, ip, email, uri; value is normalised."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"

    def to_general_name(self) -> x509.GeneralName:
        if self.type == "dns":
            return x509.DNSName(self.value)
        if self.type == "ip":
            return x509.IPAddress(ipaddress.ip_address(self.value))
        if self.type == "email":
            return x509.RFC822Name(self.value)
        return x509.UniformResourceIdentifier(self.value)


@dataclass(frozen=True)
class IssuanceRequest:
    """What a channel asks for: `channel` is acme, est, admin or cli; `requester` is the actor.

    `validity_seconds` and `not_before` are what the client asked for (None: the profile's
    default). `owner` is recorded on the certificate (ACME account owner, EST device identity).
    """

    channel: str
    requester: str
    profile: str
    public_key: CertificateIssuerPublicKeyTypes
    identifiers: tuple[Identifier, ...]
    subject: x509.Name | None = None
    validity_seconds: int | None = None
    not_before: datetime | None = None
    requested_ekus: tuple[str, ...] = ()
    owner: str | None = None
    csr_der: bytes | None = None
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # Runs inside the transaction that records the issuance, with the certificate's row id, so a
    # front end moves its own rows (an ACME order to "valid") atomically with the certificate.
    on_recorded: Callable[[Session, int], None] | None = field(
        default=None, compare=False, hash=False
    )
