"""Who is enrolling: HTTP Basic credentials and TLS client certificates (RFC 7030 §3.2.3, §3.3.2).

Basic passwords are stored as argon2id hashes. Verifying one costs tens of milliseconds by
design, so after a success the process remembers an HMAC-SHA256 of username and password (the
key is random per process, never stored) with the row it was verified against, for
`basic_cache_seconds`. Every request still reads the credential's row, so deleting or
re-creating a credential takes effect at once everywhere: a changed hash misses the cache.
`basic_recheck_seconds` (default 0) lets a worker skip that read for a remembered credential for
so many seconds, which is then how long a deletion can take to reach it. Failures are never
cached, unknown users cost one argon2 verification like known ones so timing does not reveal
names, and requests presenting the same credential at once share one argon2 run.

Client certificates come from the TLS socket (`privca serve` asks for them with CERT_OPTIONAL),
from a WSGI server's SSL_CLIENT_CERT, or from a header set by a TLS terminator, accepted only
when the connection comes from `server.trusted_proxies`. Whatever the source, the certificate is
checked here against the label: issued by us (found in the inventory, not revoked, not expired)
or directly under one of the label's trust anchors and within its validity.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ca.errors import Forbidden, Unauthorized
from ca.storage import Database
from ca.storage import certificates as certificate_store
from est_server import storage
from est_server.config import Label, PasswordHashParams

_CACHE_LIMIT = 10_000
_VERIFY_STRIPES = 64
USERNAME_MAX = 128


def password_hasher(params: PasswordHashParams) -> PasswordHasher:
    return PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
    )


def new_password() -> str:
    """A generated device password: 160 bits, URL-safe, typeable."""
    return secrets.token_urlsafe(20)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an Authorization header, or None if it carries no Basic."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep or not username or len(username) > USERNAME_MAX:
        return None
    return username, password


@dataclass
class _Remembered:
    """A credential this process verified: the row it was verified against and when."""

    user: storage.ESTUser
    digest: bytes  # HMAC of username and password under the per-process key
    expires: float  # monotonic; after it the password goes through argon2 again
    reread: float  # monotonic; after it the row is read again (basic_recheck_seconds)


class BasicVerifier:
    """Checks Basic credentials against the est_users table (thread-safe, one per process)."""

    def __init__(
        self,
        database: Database,
        params: PasswordHashParams,
        cache_seconds: int,
        recheck_seconds: int = 0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.hasher = password_hasher(params)
        self.cache_seconds = cache_seconds
        self.recheck_seconds = min(recheck_seconds, cache_seconds)
        self._clock = clock
        self._key = secrets.token_bytes(32)
        # Insertion order is age order: the oldest entry goes first when the cache is full.
        self._cache: dict[str, _Remembered] = {}
        self._lock = threading.Lock()
        # Requests presenting the same credential at once wait for one argon2 run instead of
        # each running their own: a device fleet sharing a batch credential (or one worker's
        # threads after a restart) would otherwise spend every thread in the KDF together.
        self._verifying = tuple(threading.Lock() for _ in range(_VERIFY_STRIPES))
        # Verified against when the user is unknown, so both paths cost the same.
        self._decoy = self.hasher.hash(secrets.token_urlsafe(16))

    def _digest(self, username: str, password: str) -> bytes:
        message = username.encode() + b"\x00" + password.encode()
        return hmac.digest(self._key, message, "sha256")

    def verify(self, username: str, password: str, label: str) -> storage.ESTUser | None:
        """The user if the password is right and the credential is valid for this label.

        The credential row is read again on every call (or, with `recheck_seconds`, once that
        long has passed since this process last read it), so a deleted or re-created credential
        stops working; a remembered verification only spares the argon2 run, and only while
        the row still holds the hash it was verified against.
        """
        digest = self._digest(username, password)
        with self._lock:
            remembered = self._cache.get(username)
        now = self._clock()
        if (
            remembered is not None
            and now < remembered.reread
            and now < remembered.expires
            and hmac.compare_digest(remembered.digest, digest)
        ):
            return _for_label(remembered.user, label)
        with self.database.read() as session:
            user = storage.find_user(session, username)
        if user is None:
            self._check(self._decoy, password)
            return None
        if not self._refresh(user, digest):
            with self._verifying[digest[0] % _VERIFY_STRIPES]:
                # Another thread may have verified this very credential while we waited.
                if not self._refresh(user, digest):
                    if not self._check(user.password_hash, password):
                        return None
                    self._remember(user, digest)
        return _for_label(user, label)

    def _refresh(self, user: storage.ESTUser, digest: bytes) -> bool:
        """True if this password was verified against this very row (its hash) and not long ago."""
        now = self._clock()
        with self._lock:
            remembered = self._cache.get(user.username)
            if (
                remembered is None
                or remembered.user.password_hash != user.password_hash
                or now >= remembered.expires
                or not hmac.compare_digest(remembered.digest, digest)
            ):
                return False
            remembered.user = user
            remembered.reread = now + self.recheck_seconds
            return True

    def _remember(self, user: storage.ESTUser, digest: bytes) -> None:
        if not self.cache_seconds:
            return
        now = self._clock()
        entry = _Remembered(user, digest, now + self.cache_seconds, now + self.recheck_seconds)
        with self._lock:
            self._cache.pop(user.username, None)
            while len(self._cache) >= _CACHE_LIMIT:
                del self._cache[next(iter(self._cache))]
            self._cache[user.username] = entry

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


def _for_label(user: storage.ESTUser, label: str) -> storage.ESTUser | None:
    return user if user.label is None or user.label == label else None


# -- client certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerCertificate:
    certificate: x509.Certificate
    der: bytes
    source: str  # "tls" or "proxy"


@dataclass(frozen=True)
class IssuedByUs:
    """The inventory row of a client certificate we issued."""

    row_id: int
    issuer_id: int
    serial: str
    profile: str
    owner: str | None


def peer_certificate(
    environ: dict[str, Any], trusted_proxies: tuple[str, ...], header: str
) -> PeerCertificate | None:
    """The client's certificate from the TLS connection, or from a trusted proxy's header.

    Raises Unauthorized when a certificate is presented but cannot be parsed.
    """
    der = None
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is not None:
        try:
            der = getpeercert(binary_form=True)
        except ValueError:  # not connected, or no handshake yet
            der = None
    if der:
        return _load(der, "tls")
    if environ.get("SSL_CLIENT_CERT"):
        return _load_text(environ["SSL_CLIENT_CERT"], "tls")
    value = environ.get("HTTP_" + header.upper().replace("-", "_"))
    if value and _from_trusted_proxy(environ.get("REMOTE_ADDR", ""), trusted_proxies):
        return _load_text(value, "proxy")
    return None


def _from_trusted_proxy(remote: str, trusted: tuple[str, ...]) -> bool:
    if not trusted or not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in trusted)


def _load_text(value: str, source: str) -> PeerCertificate:
    # nginx sends $ssl_client_escaped_cert (URL-encoded PEM); others send PEM with the newlines
    # folded into spaces, or bare base64 DER.
    text = urllib.parse.unquote(value).strip()
    if "-----BEGIN CERTIFICATE-----" in text:
        body = text.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----")[0]
        text = body
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("the client certificate passed by the proxy is malformed") from None
    return _load(der, source)


def _load(der: bytes, source: str) -> PeerCertificate:
    try:
        return PeerCertificate(x509.load_der_x509_certificate(der), der, source)
    except ValueError:
        raise Unauthorized("the client certificate is malformed") from None


def tls_unique(environ: dict[str, Any]) -> bytes | None:
    """RFC 5929 tls-unique of this connection; None when there is none (TLS 1.3, a proxy).

    TLS 1.3 has no tls-unique (RFC 8446 §C.5), and its replacement tls-exporter (RFC 9266)
    needs keying-material export, which Python's ssl module does not offer.
    """
    sock = environ.get("gunicorn.socket")
    version = getattr(sock, "version", None)
    if version is None or version() != "TLSv1.2":
        return None
    try:
        return sock.get_channel_binding("tls-unique")  # type: ignore[union-attr]
    except (ValueError, AttributeError):
        return None


def issued_by_us(database: Database, peer: PeerCertificate, now: datetime) -> IssuedByUs | None:
    """The inventory row if we issued this certificate; Forbidden if it is revoked or expired."""
    fingerprint = hashlib.sha256(peer.der).hexdigest()
    with database.read() as session:
        row = certificate_store.find_by_fingerprint(session, fingerprint)
        if row is None:
            return None
        found = IssuedByUs(row.id, row.issuer_id, row.serial, row.profile, row.owner)
        status, not_before, not_after = row.status, row.not_before, row.not_after
    if status == "revoked":
        raise Forbidden(f"the client certificate (serial {found.serial}) has been revoked")
    if status != "issued":
        raise Forbidden("the client certificate is not a valid certificate of this CA")
    if not_after <= now:
        raise Forbidden(f"the client certificate (serial {found.serial}) has expired")
    if not_before > now:
        raise Forbidden(f"the client certificate (serial {found.serial}) is not yet valid")
    return found


def under_trust_anchor(label: Label, certificate: x509.Certificate, now: datetime) -> bool:
    """True if the label's anchors directly signed this certificate and both are in validity.

    Raises Forbidden for an anchored certificate that is expired or not yet valid.
    """
    for anchor in label.trust_anchors:
        if anchor.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(anchor)
        except (InvalidSignature, ValueError, TypeError):
            continue
        if not anchor.not_valid_before_utc <= now <= anchor.not_valid_after_utc:
            raise Forbidden("the trust anchor of the client certificate is outside its validity")
        if certificate.not_valid_after_utc <= now:
            raise Forbidden("the client certificate has expired")
        if certificate.not_valid_before_utc > now:
            raise Forbidden("the client certificate is not yet valid")
        return True
    return False
