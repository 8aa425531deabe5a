"""Configuration: validated at start, errors name the key, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca.config import SecretRef, load_config, parse_duration
from ca.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "privca.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "privca.toml"
    path.write_text(text)
    return path


def test_the_documented_example_is_valid_and_matches_the_defaults(tmp_path):
    example = load_config(EXAMPLE, environ={})
    defaults = load_config(None, environ={})
    assert example.server == defaults.server
    assert example.root == defaults.root
    assert example.issuers == defaults.issuers
    assert example.audit == defaults.audit and example.crl == defaults.crl
    assert set(example.profiles) == {"tls-server", "tls-client", "device"}


def test_embedded_defaults_need_no_file():
    config = load_config(None, environ={})
    assert config.database_url.startswith("sqlite:///") and config.database_url.endswith(
        "privca-data/privca.db"
    )
    assert [i.name for i in config.issuers] == ["issuing-ec", "issuing-rsa"]
    assert config.server.public_base_url == "https://127.0.0.1:8443"
    assert config.database_timeouts.lock_seconds == 30
    assert config.database_timeouts.idle_in_transaction_seconds == 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nworkers = "x"', "server.workers: must be an integer"),
        ('[server]\nlisten = "nohost"', 'server.listen: must be "host:port"'),
        ("[server]\nbogus = 1", "server.bogus: unknown key"),
        ('[crl]\nvalidity = "-5m"', "crl.validity: must be a positive duration"),
        ('[database]\nurl = "mysql://x"', "database.url"),
        ("[database]\nlock_timeout_seconds = -1", "database.lock_timeout_seconds"),
        ('[hsm]\npin = "1234"', "hsm.pin: secrets are never written in the file"),
        ('[root]\nkey_type = "rsa-1024"', "root.key_type: must be one of"),
        ('[[issuers]]\nname = "a"\nsubject = "CN=a"\nparent = "nope"', "issuers[0].parent"),
        ('[profiles.x]\nissuer = "missing"', 'profiles.x.issuer: no issuing CA named "missing"'),
        (
            "[profiles.x]\nvalidity_days = 500\n[profiles.x.policy]\nmax_validity_days = 90",
            "profiles.x.validity_days",
        ),
        ("[profiles.x.policy]\nmin_rsa_bits = 1024", "profiles.x.policy.min_rsa_bits"),
        ('[ocsp]\nrefresh_before = "5d"\nvalidity = "4d"', "ocsp.refresh_before"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_errors_name_the_key_and_the_problem(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), environ={})
    assert message in str(error.value)


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, "[server]\nworkers = 2\n")
    config = load_config(
        path,
        environ={
            "PRIVCA_SERVER__WORKERS": "7",
            "PRIVCA_DATABASE__URL": "postgresql://db/x",
            "PRIVCA_LOGGING__JSON": "false",
        },
    )
    assert config.server.workers == 7
    assert config.database_url == "postgresql://db/x"
    assert config.logging.json is False
    with pytest.raises(ConfigError, match=r"server\.workers"):
        load_config(path, environ={"PRIVCA_SERVER__WORKERS": "many"})


def test_secret_references_resolve_at_use_and_never_show_their_value(tmp_path, monkeypatch):
    secret_file = tmp_path / "pin"
    secret_file.write_text("s3cret-value\n")
    ref = SecretRef(file=secret_file)
    assert ref.resolve() == "s3cret-value"
    assert "s3cret" not in repr(ref)
    env_ref = SecretRef(env="PRIVCA_TEST_SECRET")
    with pytest.raises(ConfigError) as error:
        env_ref.resolve()
    assert "PRIVCA_TEST_SECRET" in str(error.value)
    monkeypatch.setenv("PRIVCA_TEST_SECRET", "other-value")
    assert env_ref.resolve() == "other-value" and "other-value" not in repr(env_ref)
    config = load_config(write(tmp_path, '[hsm]\npin = { env = "PRIVCA_TEST_SECRET" }'), environ={})
    assert "other-value" not in repr(config)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30), ("90s", 90), ("5m", 300), ("12h", 43200), ("30d", 2592000), ("2w", 1209600)],
)
def test_durations(value, seconds):
    assert parse_duration(value, "k") == seconds


@pytest.mark.parametrize("value", [0, -1, "0s", "5x", "", True, 1.5])
def test_bad_durations_are_refused(value):
    with pytest.raises(ConfigError, match="k: must be a positive duration"):
        parse_duration(value, "k")
