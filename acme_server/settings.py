"""The `[frontends.acme]` configuration: validated once at init into frozen dataclasses.

Every error names the key (`frontends.acme.validation.http_port: must be an integer …`) and is a
ca.errors.ConfigError. Every key has a default that is safe for a private CA: validation may
reach private networks but never loopback, link-local (cloud metadata) or unspecified addresses
unless the operator says so.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ca.config import parse_duration
from ca.errors import ConfigError

PREFIX = "frontends.acme"
CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")
LIMIT_NAMES = (
    "new_orders_per_account",
    "certificates_per_name",
    "failed_validations",
    "new_accounts_per_ip",
)
# Path segments the default directory uses for its own resources: a named directory cannot take one.
RESERVED_NAMES = frozenset(
    {
        "directory",
        "new-nonce",
        "new-account",
        "new-order",
        "revoke-cert",
        "key-change",
        "renewal-info",
        "acct",
        "order",
        "authz",
        "chall",
        "cert",
    }
)
_DIRECTORY_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_DENIED_NETWORKS = ("127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "0.0.0.0/8")


@dataclass(frozen=True)
class DirectorySettings:
    """One ACME directory: "" is the default one at /acme/directory, others at /acme/NAME/."""

    name: str
    default_profile: str
    profiles: tuple[str, ...]
    eab_required: bool

    @property
    def prefix(self) -> str:
        return "/acme" if not self.name else f"/acme/{self.name}"


@dataclass(frozen=True)
class ValidationSettings:
    http_port: int = 80
    tls_alpn_port: int = 443
    resolvers: tuple[tuple[str, int], ...] = ()
    timeout: float = 10.0
    max_redirects: int = 10
    max_response_bytes: int = 8192
    allowed_networks: tuple[str, ...] = ()
    denied_networks: tuple[str, ...] = DEFAULT_DENIED_NETWORKS
    attempts: int = 3
    immediate: bool = True
    workers: int = 4

    def address_allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if any(ip in ipaddress.ip_network(n) for n in self.denied_networks):
            return False
        if not self.allowed_networks:
            return True
        return any(ip in ipaddress.ip_network(n) for n in self.allowed_networks)


@dataclass(frozen=True)
class RateLimit:
    count: int
    period: int  # seconds


@dataclass(frozen=True)
class RateLimitSettings:
    limits: Mapping[str, RateLimit | None]
    overrides: Mapping[tuple[str, str], int]  # (limit, key) -> count

    def limit_for(self, name: str, key: str) -> RateLimit | None:
        limit = self.limits.get(name)
        if limit is None:
            return None
        count = self.overrides.get((name, key))
        return limit if count is None else RateLimit(count, limit.period)


@dataclass(frozen=True)
class ARISettings:
    window_start: float = 2 / 3
    window_end: float = 0.75
    retry_after: int = 6 * 3600
    explanation_url: str | None = None


@dataclass(frozen=True)
class ACMESettings:
    directories: Mapping[str, DirectorySettings]
    terms_of_service: str | None
    website: str | None
    caa_identities: tuple[str, ...]
    nonce_lifetime: int
    order_lifetime: int
    authorization_lifetime: int
    authorization_reuse: int  # seconds; 0 disables reuse
    max_identifiers: int
    orders_page_size: int
    max_body_bytes: int
    max_contacts: int
    allow_validity_request: bool
    challenge_types: tuple[str, ...]
    registered_name_labels: int
    validation: ValidationSettings
    rate_limits: RateLimitSettings
    ari: ARISettings


class _Table:
    """Typed reads of one TOML table with the dotted path in every error."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: must be a table")
        self.raw = raw
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def get(self, name: str, default: Any = None) -> Any:
        self.seen.add(name)
        return self.raw.get(name, default)

    def string(self, name: str, default: str | None) -> str | None:
        value = self.get(name, default)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f'{self.key(name)}: must be a string, got "{value}"')
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f'{self.key(name)}: must be true or false, got "{value}"')
        return value

    def integer(self, name: str, default: int, minimum: int = 1, maximum: int = 2**31) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ConfigError(
                f'{self.key(name)}: must be an integer from {minimum} to {maximum}, got "{value}"'
            )
        return value

    def duration(self, name: str, default: int | str, *, allow_zero: bool = False) -> int:
        value = self.get(name, default)
        if allow_zero and value in (0, "0", "0s"):
            return 0
        return parse_duration(value, self.key(name))

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{self.key(name)}: must be a list of strings, got "{value}"')
        return tuple(value)

    def table(self, name: str) -> _Table:
        return _Table(self.get(name, {}), self.key(name))

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _networks(table: _Table, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    values = table.strings(name, default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f'{table.key(name)}: not an address or network: "{value}"') from None
    return tuple(str(ipaddress.ip_network(v, strict=False)) for v in values)


def _resolvers(table: _Table) -> tuple[tuple[str, int], ...]:
    result = []
    for value in table.strings("resolvers", ()):
        port: int | None = 53
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            if rest:
                port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif value.count(":") == 1:
            host, port_text = value.split(":")
            port = int(port_text) if port_text.isdigit() else None
        else:
            host = value
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f'{table.key("resolvers")}: "{value}" is not "address" or "address:port"'
            ) from None
        if port is None or not 0 < port < 65536:
            raise ConfigError(f'{table.key("resolvers")}: port out of range in "{value}"')
        result.append((host, port))
    return tuple(result)


def _fraction(table: _Table, name: str, default: float) -> float:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f'{table.key(name)}: must be a number between 0 and 1, got "{value}"')
    return float(value)


def _profile_choice(
    table: _Table, known: Mapping[str, Any], fallback: str
) -> tuple[str, tuple[str, ...]]:
    profiles = table.strings("profiles", tuple(known))
    for name in profiles:
        if name not in known:
            raise ConfigError(f'{table.key("profiles")}: no profile named "{name}"')
    if not profiles:
        raise ConfigError(f"{table.key('profiles')}: must name at least one profile")
    default = table.string("profile", fallback if fallback in profiles else profiles[0])
    assert default is not None
    if default not in known:
        raise ConfigError(f'{table.key("profile")}: no profile named "{default}"')
    if default not in profiles:
        raise ConfigError(
            f'{table.key("profile")}: "{default}" is not in this directory\'s profiles'
        )
    return default, profiles


def parse_settings(raw: Any, profiles: Mapping[str, Any]) -> ACMESettings:
    """Validate `[frontends.acme]`; raises ConfigError naming the key."""
    top = _Table(raw if raw is not None else {}, PREFIX)
    fallback = "tls-server" if "tls-server" in profiles else next(iter(profiles), "")
    default_profile, default_profiles = _profile_choice(top, profiles, fallback)
    directories = {
        "": DirectorySettings(
            "", default_profile, default_profiles, top.boolean("eab_required", False)
        )
    }
    named = top.table("directories")
    for name in named.raw:
        named.seen.add(name)
        path = named.key(name)
        if not isinstance(name, str) or not _DIRECTORY_NAME.fullmatch(name):
            raise ConfigError(f'{path}: use lower-case letters, digits and "-"')
        if name in RESERVED_NAMES:
            raise ConfigError(f"{path}: {name} is reserved for an ACME resource")
        table = _Table(named.raw[name], path)
        profile, allowed = _profile_choice(table, profiles, default_profile)
        directories[name] = DirectorySettings(
            name, profile, allowed, table.boolean("eab_required", directories[""].eab_required)
        )
        table.reject_unknown()

    validation_table = top.table("validation")
    timeout = validation_table.get("timeout", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float | str):
        raise ConfigError(f'{validation_table.key("timeout")}: must be a duration, got "{timeout}"')
    timeout_seconds = (
        float(timeout)
        if isinstance(timeout, int | float)
        else float(parse_duration(timeout, validation_table.key("timeout")))
    )
    if not 0 < timeout_seconds <= 300:
        raise ConfigError(f"{validation_table.key('timeout')}: must be from 0 to 300 seconds")
    validation = ValidationSettings(
        http_port=validation_table.integer("http_port", 80, maximum=65535),
        tls_alpn_port=validation_table.integer("tls_alpn_port", 443, maximum=65535),
        resolvers=_resolvers(validation_table),
        timeout=timeout_seconds,
        max_redirects=validation_table.integer("max_redirects", 10, minimum=0, maximum=20),
        max_response_bytes=validation_table.integer(
            "max_response_bytes", 8192, minimum=128, maximum=1 << 20
        ),
        allowed_networks=_networks(validation_table, "allowed_networks", ()),
        denied_networks=_networks(validation_table, "denied_networks", DEFAULT_DENIED_NETWORKS),
        attempts=validation_table.integer("attempts", 3, maximum=10),
        immediate=validation_table.boolean("immediate", True),
        workers=validation_table.integer("workers", 4, maximum=64),
    )
    validation_table.reject_unknown()

    limits_table = top.table("rate_limits")
    defaults = {
        "new_orders_per_account": (300, "3h"),
        "certificates_per_name": (50, "7d"),
        "failed_validations": (5, "1h"),
        "new_accounts_per_ip": (10, "3h"),
    }
    limits: dict[str, RateLimit | None] = {}
    for name, (count, period) in defaults.items():
        value = limits_table.get(name, {})
        if value is False:
            limits[name] = None
            continue
        table = _Table(value, limits_table.key(name))
        limits[name] = RateLimit(
            table.integer("count", count, maximum=10**9), table.duration("period", period)
        )
        table.reject_unknown()
    overrides: dict[tuple[str, str], int] = {}
    raw_overrides = limits_table.get("overrides", [])
    if not isinstance(raw_overrides, list):
        raise ConfigError(f"{limits_table.key('overrides')}: must be an array of tables")
    for index, item in enumerate(raw_overrides):
        table = _Table(item, f"{limits_table.key('overrides')}[{index}]")
        limit = table.string("limit", None)
        if limit not in LIMIT_NAMES:
            raise ConfigError(f"{table.key('limit')}: must be one of {', '.join(LIMIT_NAMES)}")
        key = table.string("key", None)
        if not key:
            raise ConfigError(f"{table.key('key')}: required (account id, name or IP address)")
        overrides[(limit, key.lower())] = table.integer("count", 1, minimum=0, maximum=10**9)
        table.reject_unknown()
    limits_table.reject_unknown()

    ari_table = top.table("ari")
    ari = ARISettings(
        window_start=_fraction(ari_table, "window_start", 2 / 3),
        window_end=_fraction(ari_table, "window_end", 0.75),
        retry_after=ari_table.duration("retry_after", "6h"),
        explanation_url=ari_table.string("explanation_url", None),
    )
    if ari.window_end <= ari.window_start:
        raise ConfigError(f"{ari_table.key('window_end')}: must be after window_start")
    ari_table.reject_unknown()

    challenge_types = top.strings("challenge_types", CHALLENGE_TYPES)
    for kind in challenge_types:
        if kind not in CHALLENGE_TYPES:
            raise ConfigError(
                f'{top.key("challenge_types")}: "{kind}" is not one of {", ".join(CHALLENGE_TYPES)}'
            )
    settings = ACMESettings(
        directories=directories,
        terms_of_service=top.string("terms_of_service", None),
        website=top.string("website", None),
        caa_identities=top.strings("caa_identities", ()),
        nonce_lifetime=top.duration("nonce_lifetime", "1h"),
        order_lifetime=top.duration("order_lifetime", "7d"),
        authorization_lifetime=top.duration("authorization_lifetime", "7d"),
        authorization_reuse=top.duration("authorization_reuse", "30d", allow_zero=True),
        max_identifiers=top.integer("max_identifiers", 100, maximum=1000),
        orders_page_size=top.integer("orders_page_size", 100, maximum=1000),
        max_body_bytes=top.integer("max_body_bytes", 65536, minimum=1024, maximum=1 << 22),
        max_contacts=top.integer("max_contacts", 10, minimum=0, maximum=100),
        allow_validity_request=top.boolean("allow_validity_request", True),
        challenge_types=challenge_types or CHALLENGE_TYPES,
        registered_name_labels=top.integer("registered_name_labels", 2, maximum=10),
        validation=validation,
        rate_limits=RateLimitSettings(limits, overrides),
        ari=ari,
    )
    top.reject_unknown()
    return settings
