"""The policy engine: which names, keys, lifetimes and EKUs a profile may issue, for every channel.

`PolicyRules.from_mapping` validates a `policy` table once and compiles it (name sets, sorted IP
ranges, prefix tuples), so `evaluate` costs set lookups, one bisect per IP address and no regex
compilation per request. `evaluate` returns every violation at once, each in words a requester
can act on; the caller turns a non-empty list into `PolicyDenied`.

DNS rules: `"host.example.com"` is that name only, `".example.com"` any name strictly below
example.com, `"*.example.com"` exactly one label below example.com, `"*"` any name. Names are
compared lower-case, without a trailing dot, as IDNA A-labels. A requested wildcard is allowed only
if every name it could cover is allowed, and denied if any name it could cover is denied.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import NameOID

from ca import identifier_syntax as syntax
from ca.errors import ConfigError, Violation
from ca.issuance_request import Identifier, IssuanceRequest

if TYPE_CHECKING:
    from ca.profiles import Profile

KEY_ALGORITHMS = ("rsa", "ec", "ed25519")
CURVES = ("secp256r1", "secp384r1", "secp521r1")
# Below 2048 bits RSA is breakable in practice (NIST SP 800-131A): no configuration may go lower.
RSA_BITS_FLOOR = 2048
RSA_BITS_CEILING = 16384
MAX_VALIDITY_DAYS_CEILING = 3650

_ALGORITHM_NAMES = {"rsa": "RSA", "ec": "EC", "ed25519": "Ed25519"}
_UNSUPPORTED_KEYS = (
    (dsa.DSAPublicKey, "DSA"),
    (ed448.Ed448PublicKey, "Ed448"),
    (x25519.X25519PublicKey, "X25519"),
    (x448.X448PublicKey, "X448"),
)

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- names ------------------------------------------------------------------------------------


def _self_or_ancestor_in(name: str, names: frozenset[str]) -> bool:
    if name in names:
        return True
    dot = name.find(".")
    while dot != -1:
        if name[dot + 1 :] in names:
            return True
        dot = name.find(".", dot + 1)
    return False


def _parent(name: str) -> str | None:
    _, dot, parent = name.partition(".")
    return parent if dot else None


@dataclass(frozen=True)
class _DNSRules:
    """Compiled DNS rules: bases of each rule form in sets, so a lookup is O(labels)."""

    any: bool
    exact: frozenset[str]
    one_label: frozenset[str]  # "*.base" → base
    suffix: frozenset[str]  # ".base" → base
    exact_parents: frozenset[str]

    @classmethod
    def compile(cls, rules: Iterable[str]) -> _DNSRules:
        exact, one_label, suffix = set(), set(), set()
        any_name = False
        for rule in rules:
            if rule == "*":
                any_name = True
            elif rule.startswith("*."):
                one_label.add(rule[2:])
            elif rule.startswith("."):
                suffix.add(rule[1:])
            else:
                exact.add(rule)
        parents = {p for p in (_parent(name) for name in exact) if p is not None}
        return cls(
            any_name, frozenset(exact), frozenset(one_label), frozenset(suffix), frozenset(parents)
        )

    def matches(self, name: str) -> bool:
        """Whether a non-wildcard name is covered."""
        if self.any or name in self.exact:
            return True
        parent = _parent(name)
        if parent is None:
            return False
        return parent in self.one_label or _self_or_ancestor_in(parent, self.suffix)

    def covers_all(self, base: str) -> bool:
        """Whether every name `*.base` could stand for is covered."""
        return self.any or base in self.one_label or _self_or_ancestor_in(base, self.suffix)

    def covers_any(self, base: str) -> bool:
        """Whether at least one name `*.base` could stand for is covered."""
        return self.covers_all(base) or base in self.exact_parents


def _dns_rule_problem(rule: str) -> str | None:
    if rule == "*":
        return None
    if rule.startswith("*."):
        return syntax.dns_name_problem(rule[2:])
    base = rule[1:] if rule.startswith(".") else rule
    if "*" in base:
        return 'a wildcard rule is "*" or "*.domain"'
    return syntax.dns_name_problem(base)


# --- IP ranges --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _IPRanges:
    """Collapsed, sorted ranges per IP version as integers: membership is one bisect."""

    networks: tuple[_IPNetwork, ...]
    starts: dict[int, tuple[int, ...]]
    ends: dict[int, tuple[int, ...]]

    @classmethod
    def compile(cls, networks: Iterable[str]) -> _IPRanges:
        parsed = tuple(ipaddress.ip_network(n) for n in networks)
        starts: dict[int, tuple[int, ...]] = {}
        ends: dict[int, tuple[int, ...]] = {}
        for version in (4, 6):
            collapsed = sorted(
                ipaddress.collapse_addresses([n for n in parsed if n.version == version])
            )
            starts[version] = tuple(int(n.network_address) for n in collapsed)
            ends[version] = tuple(int(n.broadcast_address) for n in collapsed)
        return cls(parsed, starts, ends)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: _IPAddress) -> bool:
        value = int(address)
        starts = self.starts[address.version]
        index = bisect_right(starts, value) - 1
        return index >= 0 and value <= self.ends[address.version][index]

    def network_of(self, address: _IPAddress) -> str:
        return next(str(n) for n in self.networks if address in n)


# --- email and URI ----------------------------------------------------------------------------


# --- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyRules:
    """One profile's policy. Build it with `from_mapping`, which validates and normalises; the
    defaults allow any name and address, at most 100 SANs, RSA 2048 to 8192 bits, EC P-256/P-384 and
    Ed25519, and only the profile's own EKUs."""

    allowed_dns: tuple[str, ...] = ()
    denied_dns: tuple[str, ...] = ()
    allow_wildcard_dns: bool = True
    allowed_ip_ranges: tuple[str, ...] = ()
    denied_ip_ranges: tuple[str, ...] = ()
    allowed_email: tuple[str, ...] = ()
    allowed_uri: tuple[str, ...] = ()
    max_san_count: int = 100
    key_algorithms: tuple[str, ...] = KEY_ALGORITHMS
    min_rsa_bits: int = RSA_BITS_FLOOR
    max_rsa_bits: int = 8192
    allowed_curves: tuple[str, ...] = ("secp256r1", "secp384r1")
    max_validity_days: int | None = None
    allowed_ekus: tuple[str, ...] = ()

    _allowed_dns: _DNSRules = field(init=False, repr=False, compare=False)
    _denied_dns: _DNSRules = field(init=False, repr=False, compare=False)
    _allowed_ip: _IPRanges = field(init=False, repr=False, compare=False)
    _denied_ip: _IPRanges = field(init=False, repr=False, compare=False)
    _email_exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _email_domains: frozenset[str] = field(init=False, repr=False, compare=False)
    _email_suffixes: frozenset[str] = field(init=False, repr=False, compare=False)
    _uri_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = {
            "_allowed_dns": _DNSRules.compile(self.allowed_dns or ("*",)),
            "_denied_dns": _DNSRules.compile(self.denied_dns),
            "_allowed_ip": _IPRanges.compile(self.allowed_ip_ranges),
            "_denied_ip": _IPRanges.compile(self.denied_ip_ranges),
            "_email_exact": frozenset(r for r in self.allowed_email if r[0] not in "@."),
            "_email_domains": frozenset(r[1:] for r in self.allowed_email if r[0] == "@"),
            "_email_suffixes": frozenset(r[1:] for r in self.allowed_email if r[0] == "."),
            "_uri_prefixes": tuple(self.allowed_uri),
        }
        for name, value in compiled.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], path: str) -> PolicyRules:
        """Parse a `policy` table; raises ConfigError naming the full key (`{path}.{key}`)."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: must be a table")
        for key in raw:
            if key not in _PARSERS:
                raise ConfigError(f"{path}.{key}: unknown key (known: {', '.join(_PARSERS)})")
        values = {
            key: parse(raw[key], f"{path}.{key}") for key, parse in _PARSERS.items() if key in raw
        }
        low = values.get("min_rsa_bits", RSA_BITS_FLOOR)
        high = values.get("max_rsa_bits", cls.max_rsa_bits)
        if low > high:
            raise ConfigError(f"{path}.min_rsa_bits: {low} is above max_rsa_bits {high}")
        return cls(**values)


def _string_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{key}: must be a list of strings, got "{value}"')
    return list(value)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _parse_dns_rules(value: Any, key: str) -> tuple[str, ...]:
    rules = []
    for item in _string_list(value, key):
        if not item.isascii():
            raise ConfigError(f'{key}: "{item}" is not ASCII; write the IDNA A-label (xn--…)')
        rule = syntax.normalise_dns(item)
        problem = _dns_rule_problem(rule)
        if problem:
            raise ConfigError(f'{key}: "{item}" is not a DNS rule: {problem}')
        rules.append(rule)
    return _unique(rules)


def _parse_ip_ranges(value: Any, key: str) -> tuple[str, ...]:
    networks = []
    for item in _string_list(value, key):
        try:
            network = ipaddress.ip_network(item)
        except ValueError:
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f'{key}: "{item}" is not an IP network') from None
            raise ConfigError(
                f'{key}: "{item}" has host bits set (did you mean "{loose}"?)'
            ) from None
        if "%" in item:
            raise ConfigError(f'{key}: "{item}" is not an IP network (it has a zone index)')
        networks.append(str(network))
    return _unique(networks)


def _parse_email_rules(value: Any, key: str) -> tuple[str, ...]:
    rules = []
    for item in _string_list(value, key):
        if not item:
            problem = "it is empty"
        elif item.startswith(("@", ".")):
            domain = item[1:].lower()
            problem = (
                "it is not ASCII"
                if not item.isascii()
                else syntax.dns_name_problem(domain)
                or ("a wildcard is not a domain" if "*" in domain else None)
            )
            rules.append(item[0] + domain)
        elif "@" in item:
            problem = syntax.email_problem(item)
            rules.append(syntax.normalise_email(item))
        else:
            problem = f'write "@{item}" for that domain or ".{item}" for names below it'
        if problem:
            raise ConfigError(f'{key}: "{item}" is not an email rule: {problem}')
    return _unique(rules)


def _parse_uri_prefixes(value: Any, key: str) -> tuple[str, ...]:
    prefixes = []
    for item in _string_list(value, key):
        problem = syntax.uri_problem(item)
        if problem:
            raise ConfigError(f'{key}: "{item}" is not a URI prefix: {problem}')
        rest = item.partition(":")[2]
        if rest.startswith("//") and not syntax.split_authority(rest[2:])[1]:
            raise ConfigError(
                f'{key}: "{item}" must end with "/" after the host, or it would also match '
                f'other hosts such as "{item}.evil"'
            )
        prefixes.append(syntax.normalise_uri(item))
    return _unique(prefixes)


def _parse_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f'{key}: must be true or false, got "{value}"')
    return value


def _integer(low: int, high: int, *, low_reason: str = "") -> Callable[[Any, str], int]:
    def parse(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{key}: must be an integer, got "{value}"')
        if value < low:
            raise ConfigError(f'{key}: must be at least {low}{low_reason}, got "{value}"')
        if value > high:
            raise ConfigError(f'{key}: must be at most {high}, got "{value}"')
        return value

    return parse


def _choices(
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]], *, non_empty: bool
) -> Callable[[Any, str], tuple[str, ...]]:
    def parse(value: Any, key: str) -> tuple[str, ...]:
        known = choices() if callable(choices) else choices
        items = _string_list(value, key)
        for item in items:
            if item not in known:
                raise ConfigError(f'{key}: "{item}" is not one of {", ".join(known)}')
        if non_empty and not items:
            raise ConfigError(f"{key}: must name at least one of {', '.join(known)}")
        return _unique(items)

    return parse


def _eku_names() -> tuple[str, ...]:
    # ca.profiles imports this module; by the time a profile's policy is parsed it is loaded.
    from ca.profiles import EKU_OIDS

    return tuple(EKU_OIDS)


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "allowed_dns": _parse_dns_rules,
    "denied_dns": _parse_dns_rules,
    "allow_wildcard_dns": _parse_bool,
    "allowed_ip_ranges": _parse_ip_ranges,
    "denied_ip_ranges": _parse_ip_ranges,
    "allowed_email": _parse_email_rules,
    "allowed_uri": _parse_uri_prefixes,
    "max_san_count": _integer(1, 10_000),
    "key_algorithms": _choices(KEY_ALGORITHMS, non_empty=True),
    "min_rsa_bits": _integer(
        RSA_BITS_FLOOR, RSA_BITS_CEILING, low_reason=" (smaller RSA keys are not safe)"
    ),
    "max_rsa_bits": _integer(RSA_BITS_FLOOR, RSA_BITS_CEILING),
    "allowed_curves": _choices(CURVES, non_empty=True),
    "max_validity_days": _integer(1, MAX_VALIDITY_DAYS_CEILING),
    "allowed_ekus": _choices(_eku_names, non_empty=False),
}


# --- evaluation -------------------------------------------------------------------------------


def _listing(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


def _check_dns(rules: PolicyRules, identifier: Identifier, out: list[Violation]) -> str | None:
    who = str(identifier)
    if not identifier.value.isascii():
        out.append(
            Violation(
                f"{who} is an internationalised name in Unicode form; request its "
                "IDNA A-label form (xn--…) instead",
                who,
            )
        )
        return None
    name = syntax.normalise_dns(identifier.value)
    problem = syntax.dns_name_problem(name)
    if problem:
        out.append(Violation(f"{who} is not a valid DNS name: {problem}", who))
        return None
    if name.startswith("*."):
        base = name[2:]
        if not rules.allow_wildcard_dns:
            out.append(
                Violation(
                    f"{who} is a wildcard name and this profile does not allow wildcard names", who
                )
            )
        if not rules._allowed_dns.covers_all(base):
            out.append(
                Violation(
                    f"{who} would cover names outside those this profile allows "
                    f"(allowed: {_listing(rules.allowed_dns)})",
                    who,
                )
            )
        if rules._denied_dns.covers_any(base):
            rule = next(r for r in rules.denied_dns if _DNSRules.compile((r,)).covers_any(base))
            out.append(
                Violation(f"{who} would cover names this profile denies (denied: {rule})", who)
            )
        return name
    if not rules._allowed_dns.matches(name):
        out.append(
            Violation(
                f"{who} is not in the names this profile allows "
                f"(allowed: {_listing(rules.allowed_dns)})",
                who,
            )
        )
    if rules._denied_dns.matches(name):
        rule = next(r for r in rules.denied_dns if _DNSRules.compile((r,)).matches(name))
        out.append(Violation(f"{who} is a name this profile denies (denied: {rule})", who))
    return name


def _check_ip(
    rules: PolicyRules, identifier: Identifier, out: list[Violation]
) -> _IPAddress | None:
    who = str(identifier)
    address, problem = syntax.parse_ip(identifier.value)
    if address is None:
        out.append(Violation(f"{who} {problem}", who))
        return None
    if rules._allowed_ip and address not in rules._allowed_ip:
        out.append(
            Violation(
                f"{who} is not in the IP ranges this profile allows "
                f"(allowed: {_listing(rules.allowed_ip_ranges)})",
                who,
            )
        )
    # An IPv4-mapped IPv6 address (::ffff:a.b.c.d) reaches the same host as a.b.c.d.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    for candidate in (address, mapped):
        if candidate is not None and rules._denied_ip and candidate in rules._denied_ip:
            out.append(
                Violation(
                    f"{who} is in an IP range this profile denies "
                    f"(denied: {rules._denied_ip.network_of(candidate)})",
                    who,
                )
            )
            break
    return address


def _check_email(rules: PolicyRules, identifier: Identifier, out: list[Violation]) -> str | None:
    who = str(identifier)
    problem = syntax.email_problem(identifier.value)
    if problem:
        out.append(Violation(f"{who} is not a valid email address: {problem}", who))
        return None
    address = syntax.normalise_email(identifier.value)
    if rules.allowed_email:
        domain = address.rpartition("@")[2]
        parent = _parent(domain)
        if not (
            address in rules._email_exact
            or domain in rules._email_domains
            or (parent is not None and _self_or_ancestor_in(parent, rules._email_suffixes))
        ):
            out.append(
                Violation(
                    f"{who} is not in the email addresses this profile allows "
                    f"(allowed: {_listing(rules.allowed_email)})",
                    who,
                )
            )
    return address


def _check_uri(rules: PolicyRules, identifier: Identifier, out: list[Violation]) -> str | None:
    who = str(identifier)
    problem = syntax.uri_problem(identifier.value)
    if problem:
        out.append(Violation(f"{who} is not a valid URI: {problem}", who))
        return None
    uri = syntax.normalise_uri(identifier.value)
    if rules._uri_prefixes and not uri.startswith(rules._uri_prefixes):
        out.append(
            Violation(
                f"{who} is not under the URI prefixes this profile allows "
                f"(allowed: {_listing(rules.allowed_uri)})",
                who,
            )
        )
    return uri


# X.520 / RFC 5280 Appendix A upper bounds (characters) for the attributes a CSR may carry.
_UPPER_BOUNDS = {
    NameOID.COMMON_NAME: 64,
    NameOID.ORGANIZATION_NAME: 64,
    NameOID.ORGANIZATIONAL_UNIT_NAME: 64,
    NameOID.LOCALITY_NAME: 128,
    NameOID.STATE_OR_PROVINCE_NAME: 128,
    NameOID.SERIAL_NUMBER: 64,
    NameOID.TITLE: 64,
    NameOID.EMAIL_ADDRESS: 255,
    NameOID.COUNTRY_NAME: 2,
    NameOID.POSTAL_CODE: 40,
    NameOID.STREET_ADDRESS: 128,
    NameOID.BUSINESS_CATEGORY: 128,
}
# Host-name-shaped text: a CN like this is read as a host name by legacy TLS clients.
_HOST_LIKE = re.compile(r"[A-Za-z0-9_*-]+(?:\.[A-Za-z0-9_*-]*)+")


def _subject_would_name_something(profile: Profile, subject: x509.Name | None) -> bool:
    # Mirrors ca.issuance's choice: the CSR subject itself, or only its common name.
    if subject is None or len(subject) == 0:
        return False
    return profile.subject_from_csr or bool(subject.get_attributes_for_oid(NameOID.COMMON_NAME))


def _check_subject_attributes(subject: x509.Name) -> list[Violation]:
    """Attribute values a certificate may carry: within their upper bounds, no control
    characters (a NUL in a CN is the classic way to smuggle a second name past a client)."""
    violations = []
    for attribute in subject:
        value = attribute.value
        if not isinstance(value, str):
            violations.append(
                Violation(f"subject attribute {attribute.oid.dotted_string} is not a text value")
            )
            continue
        name = getattr(attribute.oid, "_name", None) or attribute.oid.dotted_string
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            violations.append(Violation(f"subject {name} contains control characters"))
        if value != value.strip():
            violations.append(Violation(f'subject {name} "{value}" has leading or trailing spaces'))
        bound = _UPPER_BOUNDS.get(attribute.oid)
        if bound is not None and len(value) > bound:
            violations.append(
                Violation(f"subject {name} is {len(value)} characters long; the limit is {bound}")
            )
    return violations


def _check_common_names(
    subject: x509.Name, requested: dict[tuple[str, object], str]
) -> list[Violation]:
    """A subject CN that reads as a host name or IP address must be one of the requested SANs,
    or it would carry a name the SAN rules never saw (legacy clients still match on CN)."""
    violations = []
    for attribute in subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        if not isinstance(value, str) or not value.isascii():
            continue
        address, _ = syntax.parse_ip(value)
        if address is not None:
            listed = ("ip", address) in requested
        else:
            name = syntax.normalise_dns(value)
            if not _HOST_LIKE.fullmatch(name):
                continue  # a person's or a device's name, not a host name
            listed = syntax.dns_name_problem(name) is None and ("dns", name) in requested
        if not listed:
            violations.append(
                Violation(
                    f'the subject common name "{value}" is a host name or address that is not '
                    "among the requested subject alternative names"
                )
            )
    return violations


_CHECKS: dict[str, Callable[[PolicyRules, Identifier, list[Violation]], object]] = {
    "dns": _check_dns,
    "ip": _check_ip,
    "email": _check_email,
    "uri": _check_uri,
}


def check_public_key(rules: PolicyRules, public_key: object) -> list[Violation]:
    """Every reason `rules` refuse this subject public key (algorithm, RSA size, EC curve)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        algorithm = "rsa"
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithm = "ec"
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        algorithm = "ed25519"
    else:
        name = next(
            (n for cls, n in _UNSUPPORTED_KEYS if isinstance(public_key, cls)),
            type(public_key).__name__,
        )
        return [Violation(f"{name} keys are not supported (supported: RSA, EC, Ed25519)")]
    if algorithm not in rules.key_algorithms:
        allowed = ", ".join(_ALGORITHM_NAMES[a] for a in rules.key_algorithms)
        return [
            Violation(
                f"{_ALGORITHM_NAMES[algorithm]} keys are not allowed by this profile "
                f"(allowed: {allowed})"
            )
        ]
    violations = []
    if isinstance(public_key, rsa.RSAPublicKey):
        bits = public_key.key_size
        if bits < rules.min_rsa_bits:
            violations.append(
                Violation(
                    f"RSA key of {bits} bits is too small (this profile "
                    f"needs at least {rules.min_rsa_bits} bits)"
                )
            )
        elif bits > rules.max_rsa_bits:
            violations.append(
                Violation(
                    f"RSA key of {bits} bits is too large (this profile "
                    f"allows at most {rules.max_rsa_bits} bits)"
                )
            )
        if bits % 8:
            violations.append(
                Violation(f"RSA key of {bits} bits: the modulus size must be a multiple of 8 bits")
            )
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        if curve not in rules.allowed_curves:
            violations.append(
                Violation(
                    f"EC curve {curve} is not allowed by this profile "
                    f"(allowed: {', '.join(rules.allowed_curves)})"
                )
            )
    return violations


def evaluate(
    rules: PolicyRules, profile: Profile, request: IssuanceRequest, *, validity_seconds: int
) -> list[Violation]:
    """Every reason `rules` and `profile` refuse `request`; an empty list means allowed.

    `validity_seconds` is the lifetime the certificate would get (what the client asked for, or
    the profile's default). Violations about one identifier name it as `str(identifier)`.
    """
    request_level: list[Violation] = []
    per_identifier: list[Violation] = []
    identifiers = request.identifiers
    if not identifiers and profile.require_san:
        request_level.append(
            Violation(
                f"profile {profile.name} requires at least one subject "
                "alternative name and the request has none"
            )
        )
    if len(identifiers) > rules.max_san_count:
        request_level.append(
            Violation(
                f"the request names {len(identifiers)} subject "
                f"alternative names; profile {profile.name} allows at "
                f"most {rules.max_san_count}"
            )
        )
    refused_types: dict[str, list[str]] = {}
    seen: dict[tuple[str, object], str] = {}
    for identifier in identifiers:
        who = str(identifier)
        if identifier.type not in profile.san_types:
            refused_types.setdefault(identifier.type, []).append(who)
            continue
        first = seen.get((identifier.type, identifier.value))
        if first is None:
            key = _CHECKS[identifier.type](rules, identifier, per_identifier)
            if key is None:
                continue
            first = seen.setdefault((identifier.type, key), who)
            seen.setdefault((identifier.type, identifier.value), first)
            if first == who:
                continue
        # Checked once already: repeat only that it is a duplicate, not its other violations.
        request_level.append(
            Violation(
                f"{who} is requested more than once"
                if first == who
                else f"{who} is requested more than once (as {first})"
            )
        )
    for kind, names in refused_types.items():
        request_level.append(
            Violation(
                f"profile {profile.name} does not allow {kind} names (it allows: "
                f"{', '.join(profile.san_types)}): {_listing(names, 3)}"
            )
        )
    # The subject comes from the request when the profile says so, and its CN is reused when no
    # DNS name or IP address could supply one (see ca.issuance): then it must pass as a SAN.
    if request.subject is not None and (
        profile.subject_from_csr or not any(i.type in ("dns", "ip") for i in identifiers)
    ):
        request_level.extend(_check_subject_attributes(request.subject))
        request_level.extend(_check_common_names(request.subject, seen))
    if (
        not identifiers
        and not profile.require_san
        and not _subject_would_name_something(profile, request.subject)
    ):
        # RFC 5280 §4.1.2.6: with an empty subject the certificate must carry a SAN.
        request_level.append(
            Violation(
                "the certificate would name nothing: add a subject common name or a "
                "subject alternative name"
            )
        )
    violations = request_level + per_identifier
    violations.extend(check_public_key(rules, request.public_key))
    if validity_seconds <= 0:
        violations.append(Violation("the requested validity must be positive"))
    elif rules.max_validity_days is not None and validity_seconds > rules.max_validity_days * 86400:
        violations.append(
            Violation(
                f"the requested validity of {validity_seconds / 86400:g} days exceeds the maximum "
                f"of {rules.max_validity_days} days for profile {profile.name}"
            )
        )
    allowed_ekus = rules.allowed_ekus or profile.extended_key_usage
    for eku in dict.fromkeys(request.requested_ekus):
        if eku not in allowed_ekus:
            violations.append(
                Violation(
                    f"extended key usage {eku} is not allowed by profile "
                    f"{profile.name} (allowed: {', '.join(allowed_ekus)})"
                )
            )
    return violations
