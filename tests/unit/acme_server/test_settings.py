"""`[frontends.acme]` validation: defaults, and errors that name the key."""

from __future__ import annotations

import pytest

from acme_server.settings import DEFAULT_DENIED_NETWORKS, parse_settings
from ca.errors import ConfigError
from ca.profiles import default_profiles

PROFILES = default_profiles("issuing-ec")


def test_defaults_are_safe_for_a_private_ca():
    settings = parse_settings(None, PROFILES)
    directory = settings.directories[""]
    assert directory.default_profile == "tls-server" and directory.prefix == "/acme"
    assert not directory.eab_required
    assert settings.validation.denied_networks == DEFAULT_DENIED_NETWORKS
    assert not settings.validation.address_allowed("127.0.0.1")
    assert not settings.validation.address_allowed("169.254.169.254")
    assert settings.validation.address_allowed("10.1.2.3")
    assert settings.rate_limits.limit_for("new_orders_per_account", "x").count == 300


def test_named_directories_and_resolvers():
    settings = parse_settings(
        {
            "validation": {"resolvers": ["127.0.0.1:5353", "[::1]:53", "10.0.0.2"]},
            "directories": {"devices": {"profile": "device", "eab_required": True}},
        },
        PROFILES,
    )
    assert settings.validation.resolvers == (("127.0.0.1", 5353), ("::1", 53), ("10.0.0.2", 53))
    devices = settings.directories["devices"]
    assert devices.prefix == "/acme/devices" and devices.default_profile == "device"
    assert devices.eab_required


def test_overrides_replace_the_count_for_one_key():
    settings = parse_settings(
        {
            "rate_limits": {
                "new_orders_per_account": {"count": 5, "period": "1h"},
                "overrides": [{"limit": "new_orders_per_account", "key": "ABC", "count": 50}],
                "new_accounts_per_ip": False,
            }
        },
        PROFILES,
    )
    limits = settings.rate_limits
    assert limits.limit_for("new_orders_per_account", "abc").count == 50
    assert limits.limit_for("new_orders_per_account", "other").count == 5
    assert limits.limit_for("new_accounts_per_ip", "127.0.0.1") is None


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"validation": {"http_port": 0}}, "frontends.acme.validation.http_port"),
        ({"validation": {"resolvers": ["dns.example"]}}, "frontends.acme.validation.resolvers"),
        ({"validation": {"denied_networks": ["x"]}}, "frontends.acme.validation.denied_networks"),
        ({"directories": {"order": {}}}, "frontends.acme.directories.order"),
        ({"directories": {"x": {"profile": "nope"}}}, "frontends.acme.directories.x.profile"),
        ({"profile": "nope"}, "frontends.acme.profile"),
        ({"challenge_types": ["http-02"]}, "frontends.acme.challenge_types"),
        ({"nonce_lifetime": "-1"}, "frontends.acme.nonce_lifetime"),
        ({"colour": "blue"}, "frontends.acme.colour"),
        ({"rate_limits": {"overrides": [{"limit": "x", "key": "y"}]}}, "limit"),
        ({"ari": {"window_start": 0.9, "window_end": 0.5}}, "frontends.acme.ari.window_end"),
    ],
)
def test_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_settings(raw, PROFILES)
