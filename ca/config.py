"""Configuration: one TOML file plus PRIVCA_ environment overrides, validated once at start.

Nothing here reads configuration at import time. `load_config()` is called by the CLI and the app
factory; every error names the key (`server.workers: must be a positive integer, got "x"`).
Secrets are `SecretRef`s, resolved only where they are used and never shown by `repr`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca.errors import ConfigError

KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ed25519")
LINT_MODES = ("off", "warn", "enforce")
ENV_PREFIX = "PRIVCA_"

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# Nothing privca times is longer than a root's life; larger values only overflow datetimes.
MAX_DURATION = 100 * 366 * 86400


def duration_text_seconds(text: str) -> int | None:
    """Seconds in a duration such as "90s", "5m", "12h", "30d" (at most 12 digits, zero and any
    size allowed), or None if `text` is not one."""
    match = _DURATION.match(text)
    if match is None or len(match.group(1)) > 12:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_duration(value: Any, key: str) -> int:
    """Seconds from an integer or a string such as "90s", "5m", "12h", "30d"; positive and at
    most 100 years."""
    if isinstance(value, bool):
        raise ConfigError(f'{key}: must be a positive duration, got "{value}"')
    seconds = None
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        seconds = duration_text_seconds(value)
    if seconds is not None and seconds > MAX_DURATION:
        raise ConfigError(f'{key}: must be at most 100 years, got "{value}"')
    if seconds is not None and seconds > 0:
        return seconds
    raise ConfigError(f'{key}: must be a positive duration such as "5m" or "30d", got "{value}"')


class SecretRef:
    """A reference to a secret in the environment or a file; `repr` never shows the value."""

    def __init__(self, *, env: str | None = None, file: Path | None = None) -> None:
        if (env is None) == (file is None):
            raise ValueError("exactly one of env or file")
        self.env = env
        self.file = file

    def resolve(self) -> str:
        """The secret's value; raises ConfigError naming the source (never the value) if absent."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"secret: environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret: cannot read file {self.file}: {exc.strerror}") from None

    def exists(self) -> bool:
        if self.env is not None:
            return bool(os.environ.get(self.env))
        assert self.file is not None
        return self.file.is_file()

    def __repr__(self) -> str:
        source = f"env={self.env}" if self.env else f"file={self.file}"
        return f"SecretRef({source})"


@dataclass(frozen=True)
class ServerConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    public_base_url: str = "https://127.0.0.1:8443"
    revocation_base_url: str = ""  # empty: public_base_url
    workers: int = 2
    threads: int = 4
    tls: bool = True
    tls_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_body_bytes: int = 65536
    trusted_proxies: tuple[str, ...] = ()
    client_cert_header: str = "X-SSL-Client-Cert"
    run_jobs: bool = True


@dataclass(frozen=True)
class HSMConfig:
    module: str | None
    token_label: str
    pin: SecretRef
    so_pin: SecretRef
    softhsm_create: bool


@dataclass(frozen=True)
class CAKeyConfig:
    """A CA: the root (parent None) or an issuing CA under `parent` ("external" = offline root)."""

    name: str
    subject: str
    key_type: str
    validity_days: int
    parent: str | None
    key_label: str
    path_length: int | None


@dataclass(frozen=True)
class AuditConfig:
    checkpoint_every: int = 1000
    checkpoint_interval: int = 300
    key_label: str = "privca-audit"
    key_type: str = "ec-p256"


@dataclass(frozen=True)
class CRLConfig:
    validity: int = 7 * 86400
    refresh_before: int = 2 * 86400
    debounce: int = 2
    expired_grace: int = 7 * 86400
    shards: int = 1  # > 1: each new certificate's CDP names one of N shard CRLs
    delta: bool = False  # publish delta CRLs (and Freshest CRL pointers)
    delta_validity: int = 86400
    full_every: int = 86400  # with deltas: a new complete CRL at least this often
    max_age: int = 600  # HTTP Cache-Control max-age for CRL responses (bounded by nextUpdate)

    @property
    def scopes(self) -> tuple[int, ...]:
        """The shard numbers to publish: 0 (the whole CRL), then 1..N when sharded."""
        return (0, *range(1, self.shards + 1)) if self.shards > 1 else (0,)


@dataclass(frozen=True)
class OCSPConfig:
    validity: int = 4 * 86400
    refresh_before: int = 2 * 86400
    unknown_for_unissued: bool = True
    responder: str = "delegated"  # or "issuer"
    responder_validity: int = 7 * 86400


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    json: bool = True


@dataclass(frozen=True)
class DatabaseTimeouts:
    """PostgreSQL session limits (0 = none). A node that hangs or is paused inside a transaction
    keeps its row locks (the audit chain's head among them) and would stall every other node's
    writes: PostgreSQL ends such a session after `idle_in_transaction_seconds`, and a writer waits
    at most `lock_seconds` for a row lock, then fails its request instead of hanging it."""

    lock_seconds: int = 30
    idle_in_transaction_seconds: int = 60


@dataclass(frozen=True)
class Config:
    path: Path | None
    data_dir: Path
    database_url: str
    server: ServerConfig
    hsm: HSMConfig
    root: CAKeyConfig
    issuers: tuple[CAKeyConfig, ...]
    profiles: Mapping[str, Any]  # name -> ca.profiles.Profile
    audit: AuditConfig
    crl: CRLConfig
    ocsp: OCSPConfig
    logging: LoggingConfig
    frontends: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    database_timeouts: DatabaseTimeouts = field(default_factory=DatabaseTimeouts)

    def ca(self, name: str) -> CAKeyConfig:
        for ca_config in (self.root, *self.issuers):
            if ca_config.name == name:
                return ca_config
        raise KeyError(name)


class _Reader:
    """Typed access to one TOML table, tracking the dotted key path for error messages."""

    def __init__(self, raw: Mapping[str, Any], path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: must be a table")
        self.raw = raw
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any = None) -> Any:
        self.seen.add(name)
        return self.raw.get(name, default)

    def string(self, name: str, default: str) -> str:
        value = self.get(name, default)
        if not isinstance(value, str):
            raise ConfigError(f'{self.key(name)}: must be a string, got "{value}"')
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f'{self.key(name)}: must be true or false, got "{value}"')
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        value = self.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise ConfigError(f'{self.key(name)}: must be an integer {bound}, got "{value}"')
        return value

    def duration(self, name: str, default: int) -> int:
        return parse_duration(self.get(name, default), self.key(name))

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{self.key(name)}: must be a list of strings, got "{value}"')
        return tuple(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(
                f'{self.key(name)}: must be one of {", ".join(choices)}, got "{value}"'
            )
        return value

    def table(self, name: str) -> _Reader:
        return _Reader(self.get(name, {}), self.key(name))

    def secret(self, name: str, default: Mapping[str, str], base: Path) -> SecretRef:
        value = self.get(name, default)
        if isinstance(value, str):
            raise ConfigError(
                f"{self.key(name)}: secrets are never written in the file; "
                'use { env = "VAR" } or { file = "path" }'
            )
        if not isinstance(value, Mapping) or set(value) not in ({"env"}, {"file"}):
            raise ConfigError(f'{self.key(name)}: must be {{ env = "VAR" }} or {{ file = "path" }}')
        if "env" in value:
            return SecretRef(env=str(value["env"]))
        return SecretRef(file=_resolve_path(base, str(value["file"])))

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _resolve_path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """PRIVCA_SERVER__WORKERS=4 sets server.workers; values are read as TOML where they parse."""
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "PRIVCA_CONFIG":
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts or parts[0] not in _OVERRIDABLE:
            continue
        try:
            value: Any = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        target = raw
        for depth, part in enumerate(parts[:-1]):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                dotted = ".".join(parts[: depth + 1])
                raise ConfigError(f"{name}: {dotted} is not a table, so it has no keys to set")
        target[parts[-1]] = value


_OVERRIDABLE = {"data_dir", "server", "database", "hsm", "audit", "crl", "ocsp", "logging"}


def parse_listen(value: str, key: str) -> tuple[str, int]:
    """(host, port) from "host:port" or "[v6]:port"; ConfigError naming `key` otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConfigError(f'{key}: must be "host:port", got "{value}"')
    return host, int(port)


def _parse_ca(reader: _Reader, *, default: CAKeyConfig) -> CAKeyConfig:
    name = reader.string("name", default.name)
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
        raise ConfigError(
            f'{reader.key("name")}: use lower-case letters, digits and "-", got "{name}"'
        )
    parent = reader.get("parent", default.parent)
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f'{reader.key("parent")}: must be a CA name or "external"')
    path_length = reader.get("path_length", default.path_length)
    if path_length is not None and (not isinstance(path_length, int) or path_length < 0):
        raise ConfigError(f"{reader.key('path_length')}: must be a non-negative integer")
    result = CAKeyConfig(
        name=name,
        subject=reader.string("subject", default.subject),
        key_type=reader.choice("key_type", default.key_type, KEY_TYPES),
        validity_days=reader.integer("validity_days", default.validity_days, maximum=36500),
        parent=parent,
        key_label=reader.string("key_label", f"privca-ca-{name}"),
        path_length=path_length,
    )
    reader.reject_unknown()
    return result


DEFAULT_ROOT = CAKeyConfig("root", "CN=privca Root CA,O=privca", "ec-p384", 3650, None, "", 1)
DEFAULT_ISSUERS = (
    CAKeyConfig("issuing-ec", "CN=privca Issuing CA EC,O=privca", "ec-p256", 1825, "root", "", 0),
    CAKeyConfig(
        "issuing-rsa", "CN=privca Issuing CA RSA,O=privca", "rsa-2048", 1825, "root", "", 0
    ),
)


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override and validate the configuration; raises ConfigError naming the bad key."""
    from ca.profiles import default_profiles, parse_profiles

    environ = os.environ if environ is None else environ
    if path is None and environ.get("PRIVCA_CONFIG"):
        path = environ["PRIVCA_CONFIG"]
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base = path.resolve().parent
    _apply_env_overrides(raw, environ)
    top = _Reader(raw, "")

    data_dir = _resolve_path(base, top.string("data_dir", "privca-data")).resolve()

    srv = top.table("server")
    host, port = parse_listen(srv.string("listen", "127.0.0.1:8443"), srv.key("listen"))
    tls = srv.boolean("tls", True)
    url_host = f"[{host}]" if ":" in host else host
    default_url = f"{'https' if tls else 'http'}://{url_host}:{port}"
    public_base_url = srv.string("public_base_url", default_url).rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", public_base_url):
        raise ConfigError(
            f'server.public_base_url: must be an http(s) URL, got "{public_base_url}"'
        )
    revocation_base_url = srv.string("revocation_base_url", "").rstrip("/")
    if revocation_base_url and not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", revocation_base_url):
        raise ConfigError(
            f'server.revocation_base_url: must be an http(s) URL, got "{revocation_base_url}"'
        )
    tls_cert = srv.get("tls_cert")
    tls_key = srv.get("tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("server.tls_cert: tls_cert and tls_key must be given together")
    client_ca = srv.get("tls_client_ca")
    proxies = srv.strings("trusted_proxies", ())
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f'server.trusted_proxies: not an address or network: "{proxy}"'
            ) from None
    server = ServerConfig(
        listen_host=host,
        listen_port=port,
        public_base_url=public_base_url,
        revocation_base_url=revocation_base_url,
        workers=srv.integer("workers", 2, maximum=256),
        threads=srv.integer("threads", 4, maximum=256),
        tls=tls,
        tls_names=srv.strings("tls_names", ("localhost", "127.0.0.1")),
        tls_cert=_resolve_path(base, tls_cert) if tls_cert else None,
        tls_key=_resolve_path(base, tls_key) if tls_key else None,
        tls_client_ca=_resolve_path(base, client_ca) if client_ca else None,
        max_body_bytes=srv.integer("max_body_bytes", 65536, minimum=1024),
        trusted_proxies=proxies,
        client_cert_header=srv.string("client_cert_header", "X-SSL-Client-Cert"),
        run_jobs=srv.boolean("run_jobs", True),
    )
    srv.reject_unknown()

    db = top.table("database")
    database_url = db.string("url", f"sqlite:///{data_dir / 'privca.db'}")
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", database_url):
        raise ConfigError("database.url: must be a sqlite:/// or postgresql:// URL")
    database_timeouts = DatabaseTimeouts(
        lock_seconds=db.integer("lock_timeout_seconds", 30, minimum=0, maximum=86400),
        idle_in_transaction_seconds=db.integer(
            "idle_in_transaction_timeout_seconds", 60, minimum=0, maximum=86400
        ),
    )
    db.reject_unknown()

    hsm_reader = top.table("hsm")
    module = hsm_reader.get("module")
    if module is not None and not isinstance(module, str):
        raise ConfigError("hsm.module: must be the path of a PKCS#11 library")
    hsm = HSMConfig(
        module=module or None,
        token_label=hsm_reader.string("token_label", "privca"),
        pin=hsm_reader.secret("pin", {"file": "secrets/hsm-pin"}, data_dir),
        so_pin=hsm_reader.secret("so_pin", {"file": "secrets/hsm-so-pin"}, data_dir),
        softhsm_create=hsm_reader.boolean("softhsm_create", True),
    )
    hsm_reader.reject_unknown()

    root = _parse_ca(top.table("root"), default=DEFAULT_ROOT)
    raw_issuers = top.get("issuers")
    if raw_issuers is None:
        issuers = tuple(
            CAKeyConfig(**{**i.__dict__, "key_label": f"privca-ca-{i.name}"})
            for i in DEFAULT_ISSUERS
        )
    else:
        if not isinstance(raw_issuers, list) or not raw_issuers:
            raise ConfigError("issuers: must be a non-empty array of tables ([[issuers]])")
        issuers = tuple(
            _parse_ca(
                _Reader(item, f"issuers[{i}]"),
                default=CAKeyConfig("", "", "ec-p256", 1825, root.name, "", 0),
            )
            for i, item in enumerate(raw_issuers)
        )
    names = [root.name, *(i.name for i in issuers)]
    if len(set(names)) != len(names):
        raise ConfigError("issuers: CA names must be unique (the root's included)")
    for i, issuer in enumerate(issuers):
        if issuer.parent not in (*names, "external") or issuer.parent == issuer.name:
            raise ConfigError(
                f'issuers[{i}].parent: must name another CA or "external", got "{issuer.parent}"'
            )

    raw_profiles = top.get("profiles")
    if raw_profiles is None:
        profiles = default_profiles(issuers[0].name)
    else:
        profiles = parse_profiles(raw_profiles, issuer_names={i.name for i in issuers})

    aud = top.table("audit")
    audit = AuditConfig(
        checkpoint_every=aud.integer("checkpoint_every", 1000),
        checkpoint_interval=aud.duration("checkpoint_interval", 300),
        key_label=aud.string("key_label", "privca-audit"),
        key_type=aud.choice("key_type", "ec-p256", KEY_TYPES),
    )
    aud.reject_unknown()

    crl_reader = top.table("crl")
    crl = CRLConfig(
        validity=crl_reader.duration("validity", 7 * 86400),
        refresh_before=crl_reader.duration("refresh_before", 2 * 86400),
        debounce=crl_reader.duration("debounce", 2),
        expired_grace=crl_reader.duration("expired_grace", 7 * 86400),
        shards=crl_reader.integer("shards", 1, maximum=4096),
        delta=crl_reader.boolean("delta", False),
        delta_validity=crl_reader.duration("delta_validity", 86400),
        full_every=crl_reader.duration("full_every", 86400),
        max_age=crl_reader.duration("max_age", 600),
    )
    if crl.refresh_before >= crl.validity:
        raise ConfigError("crl.refresh_before: must be shorter than crl.validity")
    if crl.delta_validity > crl.validity:
        raise ConfigError("crl.delta_validity: must not be longer than crl.validity")
    crl_reader.reject_unknown()

    ocsp_reader = top.table("ocsp")
    ocsp = OCSPConfig(
        validity=ocsp_reader.duration("validity", 4 * 86400),
        refresh_before=ocsp_reader.duration("refresh_before", 2 * 86400),
        unknown_for_unissued=ocsp_reader.boolean("unknown_for_unissued", True),
        responder=ocsp_reader.choice("responder", "delegated", ("delegated", "issuer")),
        responder_validity=ocsp_reader.duration("responder_validity", 7 * 86400),
    )
    if ocsp.refresh_before >= ocsp.validity:
        raise ConfigError("ocsp.refresh_before: must be shorter than ocsp.validity")
    ocsp_reader.reject_unknown()

    log_reader = top.table("logging")
    logging_config = LoggingConfig(
        level=log_reader.choice("level", "info", ("debug", "info", "warning", "error")),
        json=log_reader.boolean("json", True),
    )
    log_reader.reject_unknown()

    frontends = top.get("frontends", {})
    if not isinstance(frontends, Mapping):
        raise ConfigError("frontends: must be a table of front-end tables")
    top.reject_unknown()

    return Config(
        path=Path(path) if path is not None else None,
        data_dir=data_dir,
        database_url=database_url,
        database_timeouts=database_timeouts,
        server=server,
        hsm=hsm,
        root=root,
        issuers=issuers,
        profiles=profiles,
        audit=audit,
        crl=crl,
        ocsp=ocsp,
        logging=logging_config,
        frontends=frontends,
    )
