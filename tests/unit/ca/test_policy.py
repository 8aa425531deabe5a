"""The policy engine: rule parsing, name, address, key, validity and EKU checks, through real
profiles parsed by ca.profiles."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from ca.errors import ConfigError, Violation
from ca.issuance_request import Identifier, IssuanceRequest
from ca.policy import PolicyRules, check_public_key, evaluate
from ca.profiles import Profile, default_profiles, parse_profile

DAY = 86400
P256 = ec.generate_private_key(ec.SECP256R1()).public_key()
P384 = ec.generate_private_key(ec.SECP384R1()).public_key()
P521 = ec.generate_private_key(ec.SECP521R1()).public_key()
SECP256K1 = ec.generate_private_key(ec.SECP256K1()).public_key()
ED25519 = ed25519.Ed25519PrivateKey.generate().public_key()
ED448 = ed448.Ed448PrivateKey.generate().public_key()
RSA_1024 = rsa.generate_private_key(65537, 1024).public_key()
RSA_2048 = rsa.generate_private_key(65537, 2048).public_key()


def rsa_public_key(bits: int) -> rsa.RSAPublicKey:
    """A public key with a modulus of exactly `bits` bits; policy only reads its size."""
    return rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) + 1).public_key()


def make_profile(
    policy: dict[str, Any] | None = None, name: str = "test", **fields: Any
) -> Profile:
    raw: dict[str, Any] = {"san_types": ["dns", "ip", "email", "uri"], **fields}
    if policy is not None:
        raw["policy"] = policy
    return parse_profile(name, raw, default_issuer="root", issuer_names={"root"})


def make_request(
    *identifiers: str, key: Any = P256, ekus: tuple[str, ...] = (), subject: x509.Name | None = None
) -> IssuanceRequest:
    return IssuanceRequest(
        channel="cli",
        requester="tester",
        profile="test",
        public_key=key,
        identifiers=tuple(Identifier(*i.split(":", 1)) for i in identifiers),
        subject=subject,
        requested_ekus=ekus,
    )


def violations(
    policy: dict[str, Any] | None,
    *identifiers: str,
    key: Any = P256,
    ekus: tuple[str, ...] = (),
    validity_seconds: int = 30 * DAY,
    subject: x509.Name | None = None,
    **profile_fields: Any,
) -> list[Violation]:
    profile = make_profile(policy, **profile_fields)
    request = make_request(*identifiers, key=key, ekus=ekus, subject=subject)
    return evaluate(profile.policy, profile, request, validity_seconds=validity_seconds)


def details(found: list[Violation]) -> str:
    return "\n".join(v.detail for v in found)


def refused(policy: dict[str, Any], identifier: str) -> bool:
    """Whether the policy refuses this one identifier (and says so against the identifier)."""
    found = violations(policy, identifier)
    assert all(v.identifier == identifier for v in found), found
    return bool(found)


# --- configuration ----------------------------------------------------------------------------


def test_empty_policy_table_gives_the_safe_defaults() -> None:
    rules = PolicyRules.from_mapping({}, "profiles.x.policy")
    assert rules == PolicyRules()
    assert rules.allowed_dns == () and rules.allow_wildcard_dns is True
    assert rules.max_san_count == 100
    assert rules.key_algorithms == ("rsa", "ec", "ed25519")
    assert (rules.min_rsa_bits, rules.max_rsa_bits) == (2048, 8192)
    assert rules.allowed_curves == ("secp256r1", "secp384r1")
    assert rules.max_validity_days is None and rules.allowed_ekus == ()


def test_profile_parsing_builds_the_policy_from_its_table() -> None:
    profile = make_profile(
        {"allowed_dns": [".example.com"], "max_validity_days": 30}, validity_days=10
    )
    assert profile.policy.allowed_dns == (".example.com",)
    assert profile.policy.max_validity_days == 30


def test_rules_are_normalised_when_parsed() -> None:
    rules = PolicyRules.from_mapping(
        {
            "allowed_dns": ["Host.Example.COM.", "*.Example.com", "host.example.com"],
            "allowed_ip_ranges": ["2001:DB8:0:0::/32", "10.0.0.1"],
            "allowed_email": ["Alice@Example.COM", "@Example.org"],
            "allowed_uri": ["SPIFFE://Prod.Example/ns/"],
        },
        "p",
    )
    assert rules.allowed_dns == ("host.example.com", "*.example.com")
    assert rules.allowed_ip_ranges == ("2001:db8::/32", "10.0.0.1/32")
    assert rules.allowed_email == ("Alice@example.com", "@example.org")
    assert rules.allowed_uri == ("spiffe://prod.example/ns/",)


def test_bad_cidr_is_a_config_error_naming_the_full_key() -> None:
    with pytest.raises(ConfigError) as error:
        make_profile({"allowed_ip_ranges": ["10.0.0.0/33"]}, name="tls-server")
    assert str(error.value) == (
        'profiles.tls-server.policy.allowed_ip_ranges: "10.0.0.0/33" is not an IP network'
    )


def test_unknown_policy_key_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        make_profile({"allowed_dns_names": ["a.example.com"]}, name="tls-server")
    assert str(error.value).startswith("profiles.tls-server.policy.allowed_dns_names: unknown key")


def test_min_rsa_bits_below_2048_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as error:
        make_profile({"min_rsa_bits": 1024}, name="legacy")
    message = str(error.value)
    assert message.startswith("profiles.legacy.policy.min_rsa_bits: must be at least 2048")
    assert '"1024"' in message


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            {"denied_ip_ranges": ["10.0.0.1/8"]},
            'denied_ip_ranges: "10.0.0.1/8" has host bits set (did you mean "10.0.0.0/8"?)',
        ),
        ({"allowed_ip_ranges": ["fe80::%eth0/64"]}, "allowed_ip_ranges: "),
        ({"allowed_ip_ranges": "10.0.0.0/8"}, "allowed_ip_ranges: must be a list of strings"),
        ({"allowed_dns": [42]}, "allowed_dns: must be a list of strings"),
        (
            {"allowed_dns": ["a..example.com"]},
            'allowed_dns: "a..example.com" is not a DNS rule: it has an empty label',
        ),
        ({"denied_dns": ["a.*.example.com"]}, 'denied_dns: "a.*.example.com" is not a DNS rule'),
        ({"allowed_dns": ["*example.com"]}, 'allowed_dns: "*example.com" is not a DNS rule'),
        ({"allowed_dns": ["bücher.example"]}, 'allowed_dns: "bücher.example" is not ASCII'),
        ({"allowed_email": ["example.com"]}, 'write "@example.com" for that domain'),
        ({"allowed_email": ["a@b@example.com"]}, 'allowed_email: "a@b@example.com"'),
        ({"allowed_email": ["@exa mple.com"]}, 'allowed_email: "@exa mple.com"'),
        ({"allowed_uri": ["prod.example/"]}, 'allowed_uri: "prod.example/" is not a URI prefix'),
        ({"allowed_uri": ["spiffe://prod.example"]}, 'must end with "/" after the host'),
        ({"allow_wildcard_dns": "no"}, 'allow_wildcard_dns: must be true or false, got "no"'),
        ({"max_san_count": 0}, 'max_san_count: must be at least 1, got "0"'),
        ({"max_san_count": True}, "max_san_count: must be an integer"),
        ({"max_rsa_bits": 32768}, 'max_rsa_bits: must be at most 16384, got "32768"'),
        (
            {"min_rsa_bits": 4096, "max_rsa_bits": 3072},
            "min_rsa_bits: 4096 is above max_rsa_bits 3072",
        ),
        ({"key_algorithms": ["dsa"]}, 'key_algorithms: "dsa" is not one of rsa, ec, ed25519'),
        ({"key_algorithms": []}, "key_algorithms: must name at least one of"),
        ({"allowed_curves": ["secp256k1"]}, 'allowed_curves: "secp256k1" is not one of'),
        (
            {"allowed_ekus": ["anyExtendedKeyUsage"]},
            'allowed_ekus: "anyExtendedKeyUsage" is not one of serverAuth',
        ),
        ({"max_validity_days": 0}, 'max_validity_days: must be at least 1, got "0"'),
        ({"max_validity_days": "90"}, "max_validity_days: must be an integer"),
    ],
)
def test_invalid_policy_values_are_config_errors_naming_the_key(
    policy: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        make_profile(policy, name="tls-server")
    assert str(error.value).startswith("profiles.tls-server.policy.")
    assert expected in str(error.value)


def test_policy_that_is_not_a_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^profiles\.tls-server\.policy: must be a table$"):
        make_profile(["allowed_dns"], name="tls-server")  # type: ignore[arg-type]


# --- DNS names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "name", "allowed"),
    [
        ("host.example.com", "host.example.com", True),
        ("host.example.com", "HOST.Example.com.", True),
        ("host.example.com", "a.host.example.com", False),
        ("host.example.com", "example.com", False),
        (".example.com", "a.example.com", True),
        (".example.com", "a.b.c.example.com", True),
        (".example.com", "example.com", False),
        (".example.com", "badexample.com", False),
        (".example.com", "example.com.evil", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),
        ("*", "anything.at.all", True),
        ("*", "localhost", True),
    ],
)
def test_dns_rule_forms(rule: str, name: str, allowed: bool) -> None:
    assert refused({"allowed_dns": [rule]}, f"dns:{name}") is not allowed


def test_empty_allowed_dns_allows_any_name() -> None:
    assert violations(None, "dns:whatever.internal", "dns:localhost") == []


def test_name_outside_allowed_dns_names_the_identifier_and_the_rules() -> None:
    found = violations({"allowed_dns": [".example.com"]}, "dns:foo.example.org")
    assert found == [
        Violation(
            "dns:foo.example.org is not in the names this profile allows (allowed: .example.com)",
            "dns:foo.example.org",
        )
    ]


@pytest.mark.parametrize(
    ("denied", "name"),
    [
        ("secret.example.com", "secret.example.com"),
        ("secret.example.com", "SECRET.example.com."),
        (".secret.example.com", "db.secret.example.com"),
        ("*.secret.example.com", "db.secret.example.com"),
        ("*", "www.example.com"),
    ],
)
def test_deny_beats_allow(denied: str, name: str) -> None:
    found = violations({"allowed_dns": [".example.com"], "denied_dns": [denied]}, f"dns:{name}")
    assert [v.identifier for v in found] == [f"dns:{name}"]
    assert found[0].detail == f"dns:{name} is a name this profile denies (denied: {denied})"


def test_deny_rules_leave_other_names_allowed() -> None:
    policy = {
        "allowed_dns": [".example.com"],
        "denied_dns": ["secret.example.com", ".vault.example.com", "*.db.example.com"],
    }
    assert (
        violations(
            policy,
            "dns:www.example.com",
            "dns:a.secret.example.com",
            "dns:vault.example.com",
            "dns:a.b.db.example.com",
        )
        == []
    )


def test_deny_applies_when_allowed_dns_is_empty() -> None:
    assert refused({"denied_dns": [".corp.example"]}, "dns:hr.corp.example")
    assert not refused({"denied_dns": [".corp.example"]}, "dns:corp.example")


@pytest.mark.parametrize(
    ("allowed", "wildcard", "allowed_result"),
    [
        (".example.com", "*.example.com", True),
        (".example.com", "*.a.example.com", True),
        (".example.com", "*.example.org", False),
        ("*.example.com", "*.example.com", True),
        ("*.example.com", "*.a.example.com", False),
        ("*.a.example.com", "*.example.com", False),
        ("host.example.com", "*.example.com", False),
        ("example.com", "*.example.com", False),
        ("*", "*.example.com", True),
    ],
)
def test_wildcard_is_allowed_only_if_every_name_it_covers_is_allowed(
    allowed: str, wildcard: str, allowed_result: bool
) -> None:
    found = violations({"allowed_dns": [allowed]}, f"dns:{wildcard}")
    assert (found == []) is allowed_result
    if not allowed_result:
        assert found[0].detail.startswith(
            f"dns:{wildcard} would cover names outside those this profile allows"
        )


@pytest.mark.parametrize(
    ("denied", "wildcard", "denied_result"),
    [
        ("x.example.com", "*.example.com", True),
        ("x.example.com", "*.a.example.com", False),
        (".secret.example.com", "*.example.com", False),
        (".secret.example.com", "*.secret.example.com", True),
        (".secret.example.com", "*.a.secret.example.com", True),
        ("*.example.com", "*.example.com", True),
        ("*.example.com", "*.a.example.com", False),
        ("a.b.example.com", "*.example.com", False),
        ("a.b.example.com", "*.b.example.com", True),
        ("example.com", "*.example.com", False),
        ("*", "*.example.com", True),
    ],
)
def test_wildcard_is_denied_if_any_name_it_covers_is_denied(
    denied: str, wildcard: str, denied_result: bool
) -> None:
    found = violations({"denied_dns": [denied]}, f"dns:{wildcard}")
    assert (found != []) is denied_result
    if denied_result:
        assert found == [
            Violation(
                f"dns:{wildcard} would cover names this profile denies (denied: {denied})",
                f"dns:{wildcard}",
            )
        ]


def test_wildcard_requests_refused_when_profile_disallows_wildcards() -> None:
    policy = {"allow_wildcard_dns": False}
    found = violations(policy, "dns:*.example.com", "dns:www.example.com")
    assert found == [
        Violation(
            "dns:*.example.com is a wildcard name and this profile does not allow wildcard names",
            "dns:*.example.com",
        )
    ]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a..example.com", "it has an empty label"),
        (".example.com", "it has an empty label"),
        ("example.com..", "it has an empty label"),
        ("", "it is empty"),
        ("-a.example.com", "starts or ends with a hyphen"),
        ("a-.example.com", "starts or ends with a hyphen"),
        ("a_b.example.com", "characters other than letters, digits and hyphens"),
        ("exa mple.com", "characters other than letters, digits and hyphens"),
        ("a.*.example.com", "a wildcard must be the whole leftmost label"),
        ("f*.example.com", "a wildcard must be the whole leftmost label"),
        ("*.*.example.com", "a wildcard must be the whole leftmost label"),
        ("*", "a wildcard needs a domain after it"),
        ("*.com", "a wildcard needs at least two labels after it"),
        ("a" * 64 + ".example.com", "is longer than 63 characters"),
        (".".join(["a" * 50] * 4) + "." + "b" * 50, "it is longer than 253 characters"),
        ("10.0.0.1", "its last label is all digits"),
        ("host.123", "its last label is all digits"),
    ],
)
def test_invalid_dns_names_are_refused_with_the_reason(name: str, reason: str) -> None:
    found = violations(None, f"dns:{name}")
    assert [v.identifier for v in found] == [f"dns:{name}"]
    assert found[0].detail.startswith(f"dns:{name} is not a valid DNS name: ")
    assert reason in found[0].detail


@pytest.mark.parametrize(
    "name",
    [
        "a" * 63 + ".example.com",
        ".".join(["a" * 50] * 4) + "." + "b" * 49,  # 253 characters, the most allowed
        "xn--bcher-kva.example",
        "localhost",
        "host.example.com.",
        "a-b.example.com",
        "123.example.com",
        "*.example.com",
    ],
)
def test_valid_dns_names_pass(name: str) -> None:
    assert violations(None, f"dns:{name}") == []


def test_unicode_dns_name_is_refused_asking_for_the_a_label() -> None:
    found = violations(None, "dns:bücher.example")
    assert found == [
        Violation(
            "dns:bücher.example is an internationalised name in Unicode form; request its IDNA "
            "A-label form (xn--…) instead",
            "dns:bücher.example",
        )
    ]


def test_a_label_matches_an_a_label_rule() -> None:
    assert not refused({"allowed_dns": [".xn--bcher-kva.example"]}, "dns:www.xn--bcher-kva.example")


# --- IP addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.0.0.0", True),
        ("10.0.1.255", True),
        ("10.0.2.0", False),
        ("192.168.200.7", True),
        ("192.167.255.255", False),
        ("172.16.0.1", False),
        ("2001:db8::1", True),
        ("2001:DB8:ffff::1", True),
        ("2001:db9::1", False),
        ("::1", False),
    ],
)
def test_allowed_ip_ranges_ipv4_and_ipv6(address: str, allowed: bool) -> None:
    policy = {
        "allowed_ip_ranges": ["10.0.0.0/24", "10.0.1.0/24", "192.168.0.0/16", "2001:db8::/32"]
    }
    assert refused(policy, f"ip:{address}") is not allowed


def test_ip_outside_allowed_ranges_names_the_ranges() -> None:
    found = violations({"allowed_ip_ranges": ["10.0.0.0/8"]}, "ip:11.0.0.1")
    assert found == [
        Violation(
            "ip:11.0.0.1 is not in the IP ranges this profile allows (allowed: 10.0.0.0/8)",
            "ip:11.0.0.1",
        )
    ]


def test_ipv4_address_is_not_allowed_by_an_ipv6_range() -> None:
    assert refused({"allowed_ip_ranges": ["::/0"]}, "ip:10.0.0.1")
    assert not refused({"allowed_ip_ranges": ["::/0"]}, "ip:2001:db8::1")


def test_denied_ip_range_beats_allowed_range() -> None:
    policy = {
        "allowed_ip_ranges": ["10.0.0.0/8", "2001:db8::/32"],
        "denied_ip_ranges": ["10.9.0.0/16", "2001:db8:dead::/48"],
    }
    found = violations(
        policy, "ip:10.9.1.1", "ip:2001:db8:dead::5", "ip:10.8.1.1", "ip:2001:db8:beef::5"
    )
    assert found == [
        Violation(
            "ip:10.9.1.1 is in an IP range this profile denies (denied: 10.9.0.0/16)", "ip:10.9.1.1"
        ),
        Violation(
            "ip:2001:db8:dead::5 is in an IP range this profile denies "
            "(denied: 2001:db8:dead::/48)",
            "ip:2001:db8:dead::5",
        ),
    ]


def test_ipv4_mapped_ipv6_address_is_denied_by_the_ipv4_range() -> None:
    found = violations({"denied_ip_ranges": ["127.0.0.0/8"]}, "ip:::ffff:127.0.0.1")
    assert [v.identifier for v in found] == ["ip:::ffff:127.0.0.1"]
    assert "denied: 127.0.0.0/8" in found[0].detail


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10.0.0.256", "is not an IP address"),
        ("10.0.0.0/8", "is not an IP address"),
        ("010.0.0.1", "is not an IP address"),
        ("host.example.com", "is not an IP address"),
        ("fe80::1%eth0", "has a zone index"),
        ("0.0.0.0", "is not a unicast host address"),  # noqa: S104 — an address under test
        ("::", "is not a unicast host address"),
        ("224.0.0.1", "is not a unicast host address"),
        ("ff02::1", "is not a unicast host address"),
        ("255.255.255.255", "is not a unicast host address"),
    ],
)
def test_invalid_ip_identifiers_are_refused(value: str, reason: str) -> None:
    found = violations(None, f"ip:{value}")
    assert [v.identifier for v in found] == [f"ip:{value}"]
    assert found[0].detail.startswith(f"ip:{value} {reason}")


# --- email and URI ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "address", "allowed"),
    [
        (["alice@example.com"], "alice@example.com", True),
        (["alice@example.com"], "alice@EXAMPLE.com", True),
        (["alice@example.com"], "Alice@example.com", False),
        (["alice@example.com"], "bob@example.com", False),
        (["@example.com"], "bob@example.com", True),
        (["@example.com"], "bob@mail.example.com", False),
        ([".example.com"], "bob@mail.example.com", True),
        ([".example.com"], "bob@a.b.example.com", True),
        ([".example.com"], "bob@example.com", False),
        (["@example.com", ".example.com"], "bob@example.com", True),
        (["@example.com"], "bob@badexample.com", False),
    ],
)
def test_allowed_email_rule_forms(rules: list[str], address: str, allowed: bool) -> None:
    assert refused({"allowed_email": rules}, f"email:{address}") is not allowed


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("bob.example.com", "it must have exactly one @"),
        ("a@b@example.com", "it must have exactly one @"),
        ("@example.com", "it has no local part"),
        ("bob@", "it has no domain"),
        ("bob@exa..mple.com", "its domain is not valid: it has an empty label"),
        ("bob@*.example.com", "its domain cannot be a wildcard"),
        ("bob smith@example.com", "its local part is not a plain dot-atom"),
        ('"bob"@example.com', "its local part is not a plain dot-atom"),
        ("bob.@example.com", "its local part is not a plain dot-atom"),
        ("b" * 65 + "@example.com", "its local part is longer than 64 characters"),
        ("jörg@example.com", "internationalised (UTF-8) addresses are not supported"),
    ],
)
def test_invalid_email_identifiers_are_refused(address: str, reason: str) -> None:
    found = violations(None, f"email:{address}")
    assert [v.identifier for v in found] == [f"email:{address}"]
    assert found[0].detail.startswith(f"email:{address} is not a valid email address: {reason}")


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("spiffe://prod.example/ns/web/sa/api", True),
        ("SPIFFE://PROD.example/ns/web", True),
        ("spiffe://prod.example/NS/web", False),
        ("spiffe://prod.example.evil/ns/web", False),
        ("spiffe://staging.example/ns/web", False),
        ("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", True),
        ("urn:isbn:0451450523", False),
    ],
)
def test_allowed_uri_prefixes(uri: str, allowed: bool) -> None:
    policy = {"allowed_uri": ["spiffe://prod.example/ns/", "urn:uuid:"]}
    assert refused(policy, f"uri:{uri}") is not allowed


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("prod.example/ns/web", "it has no scheme"),
        ("1http://x.example/", "it has no scheme"),
        ("spiffe:", "it has nothing after the scheme"),
        ("spiffe:///ns/web", "its authority has no host"),
        ("spiffe://prod.example/ns/../admin", 'its path has "." or ".." segments'),
        ("spiffe://prod.example/ns/%2E%2e/admin", 'its path has "." or ".." segments'),
        ("https://a.example/a b", "it contains spaces or control characters"),
        ("https://a.example/ü", "it has characters outside ASCII"),
    ],
)
def test_invalid_uri_identifiers_are_refused(uri: str, reason: str) -> None:
    found = violations(None, f"uri:{uri}")
    assert [v.identifier for v in found] == [f"uri:{uri}"]
    assert found[0].detail.startswith(f"uri:{uri} is not a valid URI: {reason}")


def test_dot_segments_cannot_escape_a_uri_prefix() -> None:
    found = violations(
        {"allowed_uri": ["spiffe://prod.example/ns/web/"]},
        "uri:spiffe://prod.example/ns/web/../../admin",
    )
    assert len(found) == 1 and "segments" in found[0].detail


# --- request-level checks ---------------------------------------------------------------------


def test_san_type_the_profile_does_not_allow_is_refused() -> None:
    found = violations(
        None,
        "dns:a.example.com",
        "email:bob@example.com",
        "uri:spiffe://x.example/a",
        san_types=["dns", "ip"],
    )
    assert found == [
        Violation(
            "profile test does not allow email names (it allows: dns, ip): email:bob@example.com"
        ),
        Violation(
            "profile test does not allow uri names (it allows: dns, ip): uri:spiffe://x.example/a"
        ),
    ]


def test_request_without_san_is_refused_when_the_profile_requires_one() -> None:
    assert violations(None) == [
        Violation(
            "profile test requires at least one subject alternative name and the request has none"
        )
    ]
    # RFC 5280 §4.1.2.6: no SAN and an empty subject would name nothing at all.
    assert violations(None, require_san=False) == [
        Violation(
            "the certificate would name nothing: add a subject common name or a "
            "subject alternative name"
        )
    ]


def test_duplicate_identifiers_are_refused_including_case_variants() -> None:
    found = violations(
        None,
        "dns:a.example.com",
        "dns:a.example.com",
        "dns:A.Example.COM.",
        "ip:2001:db8::1",
        "ip:2001:DB8:0::1",
    )
    assert found == [
        Violation("dns:a.example.com is requested more than once"),
        Violation("dns:A.Example.COM. is requested more than once (as dns:a.example.com)"),
        Violation("ip:2001:DB8:0::1 is requested more than once (as ip:2001:db8::1)"),
    ]


def test_a_repeated_refused_name_is_reported_once_plus_the_repeat() -> None:
    found = violations(
        {"allowed_dns": [".example.com"]}, "dns:Foo.example.org", "dns:Foo.example.org"
    )
    assert found == [
        Violation("dns:Foo.example.org is requested more than once"),
        Violation(
            "dns:Foo.example.org is not in the names this profile allows (allowed: .example.com)",
            "dns:Foo.example.org",
        ),
    ]


def test_more_sans_than_max_san_count_is_refused() -> None:
    names = [f"dns:h{i}.example.com" for i in range(3)]
    assert violations({"max_san_count": 3}, *names) == []
    found = violations({"max_san_count": 2}, *names)
    assert found == [
        Violation("the request names 3 subject alternative names; profile test allows at most 2")
    ]


def test_default_max_san_count_is_100() -> None:
    names = [f"dns:h{i}.example.com" for i in range(101)]
    assert violations(None, *names[:100]) == []
    assert "allows at most 100" in details(violations(None, *names))


def test_every_violation_is_returned_at_once_with_its_identifier() -> None:
    policy = {
        "allowed_dns": [".example.com"],
        "denied_dns": ["secret.example.com"],
        "allowed_ip_ranges": ["10.0.0.0/8"],
        "allowed_uri": ["spiffe://prod.example/"],
        "max_san_count": 6,
        "max_validity_days": 90,
    }
    found = violations(
        policy,
        "dns:ok.example.com",
        "dns:foo.example.org",
        "dns:secret.example.com",
        "dns:bad..example.com",
        "ip:192.168.1.1",
        "uri:spiffe://dev.example/x",
        "email:bob@example.com",
        key=RSA_1024,
        ekus=("codeSigning",),
        validity_seconds=91 * DAY,
        san_types=["dns", "ip", "uri"],
    )
    by_identifier = {v.identifier for v in found if v.identifier is not None}
    assert by_identifier == {
        "dns:foo.example.org",
        "dns:secret.example.com",
        "dns:bad..example.com",
        "ip:192.168.1.1",
        "uri:spiffe://dev.example/x",
    }
    for violation in found:
        if violation.identifier is not None:
            assert violation.detail.startswith(violation.identifier)
    request_level = details([v for v in found if v.identifier is None])
    assert "allows at most 6" in request_level
    assert "does not allow email names" in request_level
    assert "RSA key of 1024 bits is too small" in request_level
    assert "validity of 91 days exceeds the maximum of 90 days" in request_level
    assert "extended key usage codeSigning is not allowed" in request_level
    assert len(found) == 10


def test_default_tls_server_profile_allows_an_ordinary_request() -> None:
    profile = default_profiles("root")["tls-server"]
    request = make_request(
        "dns:www.example.com",
        "dns:*.example.com",
        "ip:10.1.2.3",
        "ip:2001:db8::7",
        key=RSA_2048,
        ekus=("serverAuth",),
    )
    assert evaluate(profile.policy, profile, request, validity_seconds=90 * DAY) == []


# --- subject common name ----------------------------------------------------------------------


def _subject(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def test_host_name_common_name_must_be_among_the_sans() -> None:
    found = violations(
        {"allowed_dns": [".example.com"]},
        "dns:www.example.com",
        subject=_subject("evil.example.org"),
        subject_from_csr=True,
    )
    assert found == [
        Violation(
            'the subject common name "evil.example.org" is a host name or '
            "address that is not among the requested subject alternative "
            "names"
        )
    ]


@pytest.mark.parametrize("common_name", ["WWW.example.com", "10.0.0.1", "Alice Smith", "db01"])
def test_common_name_that_is_a_san_or_not_a_host_name_passes(common_name: str) -> None:
    assert (
        violations(
            None,
            "dns:www.example.com",
            "ip:10.0.0.1",
            subject=_subject(common_name),
            subject_from_csr=True,
        )
        == []
    )


def test_common_name_address_must_be_among_the_sans() -> None:
    found = violations(
        None, "dns:www.example.com", subject=_subject("10.0.0.1"), subject_from_csr=True
    )
    assert "10.0.0.1" in details(found) and len(found) == 1


def test_common_name_is_not_checked_when_a_san_supplies_the_subject() -> None:
    assert (
        violations(
            None,
            "dns:www.example.com",
            subject=_subject("evil.example.org"),
            subject_from_csr=False,
        )
        == []
    )


def test_common_name_is_checked_when_no_dns_or_ip_san_could_replace_it() -> None:
    found = violations(
        None,
        "uri:spiffe://prod.example/a",
        subject=_subject("evil.example.org"),
        subject_from_csr=False,
        require_san=False,
    )
    assert len(found) == 1 and '"evil.example.org"' in found[0].detail
    assert (
        violations(
            None, subject=_subject("Build Agent 7"), subject_from_csr=False, require_san=False
        )
        == []
    )


# --- keys -------------------------------------------------------------------------------------


def test_rsa_1024_is_refused() -> None:
    rules = PolicyRules()
    assert check_public_key(rules, RSA_1024) == [
        Violation("RSA key of 1024 bits is too small (this profile needs at least 2048 bits)")
    ]
    assert violations(None, "dns:a.example.com", key=RSA_1024) == check_public_key(rules, RSA_1024)


def test_rsa_2048_to_8192_is_allowed_by_default() -> None:
    rules = PolicyRules()
    assert check_public_key(rules, RSA_2048) == []
    assert check_public_key(rules, rsa_public_key(8192)) == []


def test_rsa_above_max_rsa_bits_is_refused() -> None:
    assert check_public_key(PolicyRules(), rsa_public_key(8200)) == [
        Violation("RSA key of 8200 bits is too large (this profile allows at most 8192 bits)")
    ]


def test_min_rsa_bits_raises_the_floor() -> None:
    rules = PolicyRules.from_mapping({"min_rsa_bits": 3072}, "p")
    assert "too small" in details(check_public_key(rules, RSA_2048))
    assert check_public_key(rules, rsa_public_key(3072)) == []


def test_rsa_modulus_size_must_be_a_multiple_of_8() -> None:
    assert check_public_key(PolicyRules(), rsa_public_key(2052)) == [
        Violation("RSA key of 2052 bits: the modulus size must be a multiple of 8 bits")
    ]


def test_p521_is_refused_by_default_and_allowed_when_configured() -> None:
    assert check_public_key(PolicyRules(), P521) == [
        Violation(
            "EC curve secp521r1 is not allowed by this profile (allowed: secp256r1, secp384r1)"
        )
    ]
    rules = PolicyRules.from_mapping({"allowed_curves": ["secp384r1", "secp521r1"]}, "p")
    assert check_public_key(rules, P521) == []
    assert check_public_key(rules, P384) == []
    assert "secp256r1 is not allowed" in details(check_public_key(rules, P256))


def test_curve_outside_the_supported_set_is_refused() -> None:
    assert "EC curve secp256k1 is not allowed" in details(
        check_public_key(PolicyRules(), SECP256K1)
    )


def test_ed25519_is_allowed_by_default_and_refused_when_not_in_key_algorithms() -> None:
    assert check_public_key(PolicyRules(), ED25519) == []
    rules = PolicyRules.from_mapping({"key_algorithms": ["rsa", "ec"]}, "p")
    assert check_public_key(rules, ED25519) == [
        Violation("Ed25519 keys are not allowed by this profile (allowed: RSA, EC)")
    ]
    assert check_public_key(rules, P256) == []


def test_rsa_refused_when_key_algorithms_is_ec_only() -> None:
    rules = PolicyRules.from_mapping({"key_algorithms": ["ec"]}, "p")
    assert check_public_key(rules, RSA_2048) == [
        Violation("RSA keys are not allowed by this profile (allowed: EC)")
    ]


def test_unsupported_key_type_is_refused() -> None:
    assert check_public_key(PolicyRules(), ED448) == [
        Violation("Ed448 keys are not supported (supported: RSA, EC, Ed25519)")
    ]


# --- validity ---------------------------------------------------------------------------------


def test_validity_up_to_max_validity_days_is_allowed_and_beyond_refused() -> None:
    policy = {"max_validity_days": 397}
    assert violations(policy, "dns:a.example.com", validity_seconds=397 * DAY) == []
    found = violations(policy, "dns:a.example.com", validity_seconds=397 * DAY + 1)
    assert len(found) == 1 and found[0].identifier is None
    assert "exceeds the maximum of 397 days for profile test" in found[0].detail


def test_validity_is_unbounded_by_policy_without_max_validity_days() -> None:
    assert violations(None, "dns:a.example.com", validity_seconds=3650 * DAY) == []


def test_non_positive_validity_is_refused() -> None:
    assert violations(None, "dns:a.example.com", validity_seconds=0) == [
        Violation("the requested validity must be positive")
    ]


# --- extended key usages ----------------------------------------------------------------------


def test_requested_ekus_must_be_the_profiles_own_by_default() -> None:
    fields = {"extended_key_usage": ["serverAuth", "clientAuth"]}
    assert violations(None, "dns:a.example.com", ekus=("clientAuth", "serverAuth"), **fields) == []
    found = violations(None, "dns:a.example.com", ekus=("codeSigning", "madeUpEKU"), **fields)
    assert found == [
        Violation(
            "extended key usage codeSigning is not allowed by profile test "
            "(allowed: serverAuth, clientAuth)"
        ),
        Violation(
            "extended key usage madeUpEKU is not allowed by profile test "
            "(allowed: serverAuth, clientAuth)"
        ),
    ]


def test_allowed_ekus_replaces_the_profiles_own_list() -> None:
    policy = {"allowed_ekus": ["clientAuth", "emailProtection"]}
    fields = {"extended_key_usage": ["serverAuth"]}
    assert violations(policy, "dns:a.example.com", ekus=("emailProtection",), **fields) == []
    assert "serverAuth is not allowed" in details(
        violations(policy, "dns:a.example.com", ekus=("serverAuth",), **fields)
    )


# --- subject attributes -----------------------------------------------------------------------


def _name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    # _validate=False: CSRs made elsewhere carry values cryptography would not build itself.
    return x509.Name([x509.NameAttribute(oid, value, _validate=False) for oid, value in pairs])


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (_name((NameOID.COMMON_NAME, "bank.example.com\x00.evil.test")), "control characters"),
        (_name((NameOID.COMMON_NAME, "bank.example.com ")), "leading or trailing spaces"),
        (_name((NameOID.COMMON_NAME, "c" * 65)), "the limit is 64"),
        (_name((NameOID.ORGANIZATION_NAME, "o" * 65)), "the limit is 64"),
        (_name((NameOID.POSTAL_CODE, "1" * 41)), "the limit is 40"),
        (_name((NameOID.COMMON_NAME, "bank_login.example.com")), "not among the requested"),
    ],
)
def test_subject_attributes_a_certificate_cannot_carry_are_refused(subject, expected) -> None:
    found = violations(
        None,
        "email:a@example.test",
        subject=subject,
        require_san=False,
        subject_from_csr=True,
        san_types=["email", "dns"],
    )
    assert expected in details(found)


def test_plain_names_with_dots_are_not_taken_for_host_names() -> None:
    subject = _name((NameOID.COMMON_NAME, "J. R. Smith"), (NameOID.ORGANIZATION_NAME, "Ops Ltd."))
    assert (
        violations(
            None,
            "email:j@example.test",
            subject=subject,
            require_san=False,
            subject_from_csr=True,
            san_types=["email"],
        )
        == []
    )
