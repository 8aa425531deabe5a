"""Certificate profiles: what a certificate of each kind contains, and the policy that guards it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.errors import ConfigError
from ca.policy import PolicyRules

KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
)
EKU_OIDS = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}
SAN_TYPES = ("dns", "ip", "email", "uri")
LINT_MODES = ("off", "warn", "enforce")


@dataclass(frozen=True)
class Profile:
    """A kind of certificate. `key_usage` names cryptography's KeyUsage fields; RSA keys also get
    key_encipherment when `key_encipherment_for_rsa` (TLS key transport), EC keys never do."""

    name: str
    issuer: str
    validity_days: int
    key_usage: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    san_types: tuple[str, ...]
    require_san: bool
    subject_from_csr: bool
    key_encipherment_for_rsa: bool
    lint: str
    policy: PolicyRules
    description: str = ""

    def public_summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "issuer": self.issuer,
            "validity_days": self.validity_days,
            "extended_key_usage": list(self.extended_key_usage),
            "san_types": list(self.san_types),
        }


def _strings(
    raw: Mapping[str, Any],
    key: str,
    path: str,
    default: tuple[str, ...],
    allowed: tuple[str, ...] | None = None,
) -> tuple[str, ...]:
    value = raw.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{path}.{key}: must be a list of strings, got "{value}"')
    if allowed is not None:
        for item in value:
            if item not in allowed:
                raise ConfigError(f'{path}.{key}: "{item}" is not one of {", ".join(allowed)}')
    return tuple(value)


_KNOWN_KEYS = {
    "issuer",
    "validity_days",
    "key_usage",
    "extended_key_usage",
    "san_types",
    "require_san",
    "subject_from_csr",
    "key_encipherment_for_rsa",
    "lint",
    "policy",
    "description",
}


def parse_profile(
    name: str, raw: Mapping[str, Any], *, default_issuer: str, issuer_names: set[str]
) -> Profile:
    """One `[profiles.NAME]` table; raises ConfigError naming the key."""
    path = f"profiles.{name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: must be a table")
    for key in raw:
        if key not in _KNOWN_KEYS:
            raise ConfigError(f"{path}.{key}: unknown key")
    issuer = raw.get("issuer", default_issuer)
    if issuer not in issuer_names:
        raise ConfigError(f'{path}.issuer: no issuing CA named "{issuer}"')
    validity = raw.get("validity_days", 90)
    if isinstance(validity, bool) or not isinstance(validity, int) or not 1 <= validity <= 3650:
        raise ConfigError(
            f'{path}.validity_days: must be an integer from 1 to 3650, got "{validity}"'
        )
    flags = {}
    for key, default in (
        ("require_san", True),
        ("subject_from_csr", False),
        ("key_encipherment_for_rsa", True),
    ):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f'{path}.{key}: must be true or false, got "{value}"')
        flags[key] = value
    lint = raw.get("lint", "off")
    if lint not in LINT_MODES:
        raise ConfigError(f'{path}.lint: must be one of {", ".join(LINT_MODES)}, got "{lint}"')
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{path}.description: must be a string")
    policy = PolicyRules.from_mapping(raw.get("policy", {}), f"{path}.policy")
    if policy.max_validity_days is not None and validity > policy.max_validity_days:
        raise ConfigError(
            f"{path}.validity_days: {validity} exceeds policy.max_validity_days "
            f"{policy.max_validity_days}"
        )
    return Profile(
        name=name,
        issuer=issuer,
        validity_days=validity,
        key_usage=_strings(raw, "key_usage", path, ("digital_signature",), KEY_USAGES),
        extended_key_usage=_strings(
            raw, "extended_key_usage", path, ("serverAuth",), tuple(EKU_OIDS)
        ),
        san_types=_strings(raw, "san_types", path, ("dns", "ip"), SAN_TYPES),
        lint=lint,
        policy=policy,
        description=description,
        **flags,
    )


def parse_profiles(raw: Any, *, issuer_names: set[str]) -> dict[str, Profile]:
    """All `[profiles.*]` tables; the first issuer is the default for profiles that name none."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("profiles: must be a table with at least one [profiles.NAME] table")
    default_issuer = sorted(issuer_names)[0]
    return {
        name: parse_profile(name, table, default_issuer=default_issuer, issuer_names=issuer_names)
        for name, table in raw.items()
    }


def default_profiles(issuer: str) -> dict[str, Profile]:
    """tls-server, tls-client and device on one issuer, for the embedded defaults."""
    names = {issuer}
    return parse_profiles(
        {
            "tls-server": {
                "issuer": issuer,
                "description": "TLS server certificates (DNS names and IP addresses)",
                "validity_days": 90,
                "extended_key_usage": ["serverAuth"],
                "san_types": ["dns", "ip"],
                "policy": {"max_validity_days": 397},
            },
            "tls-client": {
                "issuer": issuer,
                "description": "TLS client certificates for services and people",
                "validity_days": 90,
                "extended_key_usage": ["clientAuth"],
                "san_types": ["dns", "email", "uri"],
                "subject_from_csr": True,
                "policy": {"max_validity_days": 397},
            },
            "device": {
                "issuer": issuer,
                "description": "Device identity (EST enrolment); TLS client and server",
                "validity_days": 365,
                "extended_key_usage": ["clientAuth", "serverAuth"],
                "san_types": ["dns", "ip", "uri"],
                "require_san": False,
                "subject_from_csr": True,
                "policy": {"max_validity_days": 825},
            },
        },
        issuer_names=names,
    )


def server_profile(issuer: str) -> Profile:
    """privca's own HTTPS certificate: not offered to clients, not restricted by client policy."""
    return parse_profile(
        "privca-server",
        {
            "issuer": issuer,
            "validity_days": 90,
            "extended_key_usage": ["serverAuth"],
            "san_types": ["dns", "ip"],
            "description": "privca's own HTTPS certificate",
        },
        default_issuer=issuer,
        issuer_names={issuer},
    )
