"""The `[frontends.est]` table: labels (issuer, profile, authentication policy) and their options.

Validated once in init_app; every error names the key, as ca/config.py does. Without any
`[frontends.est]` table one implicit label serves the unlabelled paths: the "device" profile with
HTTP Basic, so `privca serve` plus `privca est user create` is a working EST server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.config import KEY_TYPES, Config, parse_duration
from ca.errors import ConfigError

OPERATIONS = ("cacerts", "simpleenroll", "simplereenroll", "csrattrs", "serverkeygen", "fullcmc")
AUTH_MODES = ("basic", "cert", "both", "any")
# RFC 7030 §3.2.2: a label is one path segment; ours stay printable and short.
LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_PROFILE = "device"

# Names operators may write in `csrattrs` instead of dotted OIDs (RFC 7030 §4.5.2 examples).
CSR_ATTRIBUTE_NAMES = {
    "challengePassword": "1.2.840.113549.1.9.7",
    "extensionRequest": "1.2.840.113549.1.9.14",
    "emailAddress": "1.2.840.113549.1.9.1",
    "macAddress": "1.3.6.1.1.1.1.22",
    "serialNumber": "2.5.4.5",
    "commonName": "2.5.4.3",
    "organizationName": "2.5.4.10",
}
_DOTTED_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")

_LABEL_KEYS = {
    "profile",
    "issuer",
    "auth",
    "realm",
    "trust_anchors",
    "accept_issued_certificates",
    "reenroll_profiles",
    "allow_subject_change",
    "manual_approval",
    "retry_after",
    "csrattrs",
    "key_type",
    "serverkeygen",
    "require_channel_binding",
}
_TOP_KEYS = {
    "labels",
    "default_label",
    "basic_cache_seconds",
    "basic_recheck_seconds",
    "password_hash",
}


@dataclass(frozen=True)
class PasswordHashParams:
    """argon2id cost for new credentials (verification reads the cost stored in each hash)."""

    time_cost: int = 2
    memory_kib: int = 19456
    parallelism: int = 1


@dataclass(frozen=True)
class Label:
    """One EST label: which profile (hence issuer) it issues from and who may enroll."""

    name: str
    profile: str
    issuer: str
    auth: str = "basic"
    realm: str = "privca EST"
    trust_anchors: tuple[x509.Certificate, ...] = ()
    trust_anchors_pem: bytes = b""
    accept_issued_certificates: bool = False
    reenroll_profiles: tuple[str, ...] = ()
    allow_subject_change: bool = False
    manual_approval: bool = False
    retry_after: int = 60
    csrattrs: tuple[str, ...] = ()
    key_type: str | None = None
    serverkeygen: bool = False
    require_channel_binding: bool = False

    @property
    def accepts_basic(self) -> bool:
        return self.auth in ("basic", "both", "any")

    @property
    def accepts_certificate(self) -> bool:
        return self.auth in ("cert", "both", "any")


@dataclass(frozen=True)
class ESTSettings:
    labels: Mapping[str, Label]
    default_label: str | None
    basic_cache_seconds: int = 300
    basic_recheck_seconds: int = 0
    password_hash: PasswordHashParams = field(default_factory=PasswordHashParams)

    def label(self, name: str | None) -> Label | None:
        if name is None:
            return self.labels.get(self.default_label) if self.default_label else None
        return self.labels.get(name)


def _bool(raw: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f'{path}.{key}: must be true or false, got "{value}"')
    return value


def _strings(raw: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{path}.{key}: must be a list of strings, got "{value}"')
    return tuple(value)


def _anchors(
    files: tuple[str, ...], base: Path, path: str
) -> tuple[tuple[x509.Certificate, ...], bytes]:
    certificates: list[x509.Certificate] = []
    pems = b""
    for name in files:
        file = Path(name).expanduser()
        file = file if file.is_absolute() else base / file
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}.trust_anchors: cannot read {file}: {exc.strerror}") from None
        try:
            loaded = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ConfigError(f"{path}.trust_anchors: {file} holds no PEM certificate") from None
        for certificate in loaded:
            try:
                constraints = certificate.extensions.get_extension_for_class(
                    x509.BasicConstraints
                ).value
            except x509.ExtensionNotFound:
                constraints = None
            if constraints is None or not constraints.ca:
                raise ConfigError(
                    f"{path}.trust_anchors: {file} holds a certificate that is not a CA "
                    f"({certificate.subject.rfc4514_string()})"
                )
        certificates.extend(loaded)
        pems += data if data.endswith(b"\n") else data + b"\n"
    return tuple(certificates), pems


def _csrattrs(values: tuple[str, ...], path: str) -> tuple[str, ...]:
    oids = []
    for value in values:
        oid = CSR_ATTRIBUTE_NAMES.get(value, value)
        if not _DOTTED_OID.fullmatch(oid):
            raise ConfigError(
                f'{path}.csrattrs: "{value}" is neither a dotted OID nor one of '
                f"{', '.join(CSR_ATTRIBUTE_NAMES)}"
            )
        oids.append(oid)
    return tuple(oids)


def parse_label(name: str, raw: Any, config: Config, base: Path) -> Label:
    path = f"frontends.est.labels.{name}"
    if not LABEL_NAME.fullmatch(name) or name in OPERATIONS:
        raise ConfigError(
            f"{path}: a label is one path segment of letters, digits, '.', '_' and '-' "
            "(at most 64) and not an operation name"
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: must be a table")
    for key in raw:
        if key not in _LABEL_KEYS:
            raise ConfigError(f"{path}.{key}: unknown key")
    profile_name = raw.get("profile")
    if not isinstance(profile_name, str):
        raise ConfigError(f"{path}.profile: required, the name of a [profiles.NAME] table")
    profile = config.profiles.get(profile_name)
    if profile is None:
        raise ConfigError(
            f'{path}.profile: no profile named "{profile_name}"; '
            f"known: {', '.join(sorted(config.profiles))}"
        )
    issuer = raw.get("issuer", profile.issuer)
    if issuer != profile.issuer:
        # The core picks the issuer from the profile; a label naming another would lie.
        raise ConfigError(
            f'{path}.issuer: profile "{profile_name}" issues from "{profile.issuer}", '
            f'not "{issuer}"'
        )
    auth = raw.get("auth", "basic")
    if auth not in AUTH_MODES:
        raise ConfigError(f'{path}.auth: must be one of {", ".join(AUTH_MODES)}, got "{auth}"')
    realm = raw.get("realm", f"privca EST {name}")
    if not isinstance(realm, str) or '"' in realm or "\\" in realm or not realm:
        raise ConfigError(f"{path}.realm: must be a non-empty string without quotes")
    anchors, anchors_pem = _anchors(_strings(raw, "trust_anchors", path), base, path)
    accept_issued = _bool(raw, "accept_issued_certificates", path, False)
    if auth in ("cert", "both") and not anchors and not accept_issued:
        raise ConfigError(
            f'{path}.trust_anchors: auth "{auth}" needs trust_anchors or '
            "accept_issued_certificates = true"
        )
    reenroll_profiles = _strings(raw, "reenroll_profiles", path) or (profile_name,)
    for item in reenroll_profiles:
        if item not in config.profiles:
            raise ConfigError(f'{path}.reenroll_profiles: no profile named "{item}"')
    retry_after = parse_duration(raw.get("retry_after", 60), f"{path}.retry_after")
    key_type = raw.get("key_type")
    if key_type is not None and key_type not in KEY_TYPES:
        raise ConfigError(
            f'{path}.key_type: must be one of {", ".join(KEY_TYPES)}, got "{key_type}"'
        )
    return Label(
        name=name,
        profile=profile_name,
        issuer=profile.issuer,
        auth=auth,
        realm=realm,
        trust_anchors=anchors,
        trust_anchors_pem=anchors_pem,
        accept_issued_certificates=accept_issued,
        reenroll_profiles=reenroll_profiles,
        allow_subject_change=_bool(raw, "allow_subject_change", path, False),
        manual_approval=_bool(raw, "manual_approval", path, False),
        retry_after=retry_after,
        csrattrs=_csrattrs(_strings(raw, "csrattrs", path), path),
        key_type=key_type,
        serverkeygen=_bool(raw, "serverkeygen", path, False),
        require_channel_binding=_bool(raw, "require_channel_binding", path, False),
    )


def parse_settings(config: Config) -> ESTSettings:
    """The validated EST settings; raises ConfigError naming the key."""
    raw = config.frontends.get("est")
    base = Path(config.path).resolve().parent if config.path is not None else Path.cwd()
    if raw is None:
        if DEFAULT_PROFILE not in config.profiles:
            return ESTSettings(labels={}, default_label=None)
        label = parse_label("default", {"profile": DEFAULT_PROFILE}, config, base)
        return ESTSettings(labels={"default": label}, default_label="default")
    if not isinstance(raw, Mapping):
        raise ConfigError("frontends.est: must be a table")
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"frontends.est.{key}: unknown key")
    tables = raw.get("labels", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("frontends.est.labels: must be a table of [frontends.est.labels.NAME]")
    labels = {name: parse_label(name, table, config, base) for name, table in tables.items()}
    default = raw.get("default_label", "default" if "default" in labels else None)
    if default is not None and default not in labels:
        raise ConfigError(f'frontends.est.default_label: no label named "{default}"')
    cache = raw.get("basic_cache_seconds", 300)
    if isinstance(cache, bool) or not isinstance(cache, int) or not 0 <= cache <= 86400:
        raise ConfigError(
            f'frontends.est.basic_cache_seconds: must be an integer from 0 to 86400, got "{cache}"'
        )
    recheck = raw.get("basic_recheck_seconds", 0)
    if isinstance(recheck, bool) or not isinstance(recheck, int) or not 0 <= recheck <= 3600:
        raise ConfigError(
            "frontends.est.basic_recheck_seconds: must be an integer from 0 to 3600, "
            f'got "{recheck}"'
        )
    hash_raw = raw.get("password_hash", {})
    if not isinstance(hash_raw, Mapping):
        raise ConfigError("frontends.est.password_hash: must be a table")
    params = {}
    for key, default_value, minimum in (
        ("time_cost", 2, 1),
        ("memory_kib", 19456, 8192),
        ("parallelism", 1, 1),
    ):
        value = hash_raw.get(key, default_value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"frontends.est.password_hash.{key}: must be an integer of at least {minimum}, "
                f'got "{value}"'
            )
        params[key] = value
    for key in hash_raw:
        if key not in params:
            raise ConfigError(f"frontends.est.password_hash.{key}: unknown key")
    return ESTSettings(
        labels=labels,
        default_label=default,
        basic_cache_seconds=cache,
        basic_recheck_seconds=recheck,
        password_hash=PasswordHashParams(**params),
    )
