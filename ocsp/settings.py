"""The responder's settings: `[ocsp]` from the core configuration plus `[frontends.ocsp]`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ca.config import KEY_TYPES, Config, parse_duration, parse_listen
from ca.errors import ConfigError

PRESIGN_HASHES = ("sha1", "sha256")


@dataclass(frozen=True)
class OCSPSettings:
    validity: int
    refresh_before: int
    unknown_for_unissued: bool
    responder: str  # "delegated" or "issuer"
    responder_validity: int
    max_age: int = 3600
    max_request_bytes: int = 8192
    max_cert_ids: int = 16
    cache_entries: int = 100_000
    responder_key_type: str = "ec-p256"
    unknown_validity: int = 3600
    presign_hashes: tuple[str, ...] = PRESIGN_HASHES
    batch: int = 500
    listen: tuple[str, int] | None = None  # the dedicated listener's address, None for none
    listen_processes: int = 2
    watch_stale: int = 5  # seconds without a successful change watch before memory is not used

    @property
    def responder_renew_before(self) -> int:
        """Renew a responder certificate with less than this left (responses never outlive it)."""
        return min(self.validity, self.responder_validity // 2)


_KEYS = (
    "max_age",
    "max_request_bytes",
    "max_cert_ids",
    "cache_entries",
    "responder_key_type",
    "unknown_validity",
    "presign_hashes",
    "batch",
    "listen",
    "listen_processes",
    "watch_stale",
)


def _integer(raw: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f'frontends.ocsp.{name}: must be an integer from {low} to {high}, got "{value}"'
        )
    return value


def ocsp_settings(config: Config) -> OCSPSettings:
    """Validate `[frontends.ocsp]`; raises ConfigError naming the key."""
    raw = config.frontends.get("ocsp", {})
    if not isinstance(raw, Mapping):
        raise ConfigError("frontends.ocsp: must be a table")
    for key in raw:
        if key not in _KEYS:
            raise ConfigError(f"frontends.ocsp.{key}: unknown key")
    key_type = raw.get("responder_key_type", "ec-p256")
    if key_type not in KEY_TYPES:
        raise ConfigError(
            f"frontends.ocsp.responder_key_type: must be one of {', '.join(KEY_TYPES)}, "
            f'got "{key_type}"'
        )
    hashes = raw.get("presign_hashes", list(PRESIGN_HASHES))
    if (
        not isinstance(hashes, list)
        or not hashes
        or any(h not in PRESIGN_HASHES for h in hashes)
        or len(set(hashes)) != len(hashes)
    ):
        raise ConfigError(
            'frontends.ocsp.presign_hashes: must be a list of "sha1" and/or "sha256", '
            f'got "{hashes}"'
        )
    listen = raw.get("listen")
    if listen is not None:
        if not isinstance(listen, str):
            raise ConfigError(f'frontends.ocsp.listen: must be "host:port", got "{listen}"')
        listen = parse_listen(listen, "frontends.ocsp.listen")
    ocsp = config.ocsp
    return OCSPSettings(
        validity=ocsp.validity,
        refresh_before=ocsp.refresh_before,
        unknown_for_unissued=ocsp.unknown_for_unissued,
        responder=ocsp.responder,
        responder_validity=ocsp.responder_validity,
        max_age=parse_duration(raw.get("max_age", "1h"), "frontends.ocsp.max_age"),
        max_request_bytes=_integer(raw, "max_request_bytes", 8192, 64, 1_048_576),
        max_cert_ids=_integer(raw, "max_cert_ids", 16, 1, 1000),
        cache_entries=_integer(raw, "cache_entries", 100_000, 0, 100_000_000),
        responder_key_type=key_type,
        unknown_validity=min(
            parse_duration(raw.get("unknown_validity", "1h"), "frontends.ocsp.unknown_validity"),
            ocsp.validity,
        ),
        presign_hashes=tuple(hashes),
        batch=_integer(raw, "batch", 500, 1, 100_000),
        listen=listen,
        listen_processes=_integer(raw, "listen_processes", 2, 1, 256),
        watch_stale=parse_duration(raw.get("watch_stale", "5s"), "frontends.ocsp.watch_stale"),
    )
