"""CACore: the one object front ends receive (`init_app(app, core)`); it ties config, storage,
the token, issuers, profiles, audit and metrics together and offers the core's operations."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from ca import audit as audit_log
from ca.config import Config, SecretRef
from ca.errors import Unavailable
from ca.issuance_request import IssuanceRequest
from ca.issuers import Issuer, KeyStore, load_issuers
from ca.metrics import Metrics
from ca.profiles import Profile
from ca.storage import Database
from ca.storage.group_commit import GroupCommit
from ca.urls import PublicURLs

log = logging.getLogger("privca.core")

IssuanceListener = Callable[[Session, Issuer, int], None]


class CACore:
    """Built once per process, after any fork (the token and the database pool are per process)."""

    def __init__(
        self,
        config: Config,
        database: Database,
        keystore: KeyStore,
        *,
        clock: Callable[[], datetime] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.keystore = keystore
        self.urls = PublicURLs(config.server.public_base_url, config.server.revocation_base_url)
        self.profiles: Mapping[str, Profile] = config.profiles
        self.metrics = metrics or Metrics()
        self._clock = clock or (lambda: datetime.now(UTC))
        # Issuance transactions from this process's threads share commits (ca.storage.group_commit).
        self.group_commit = GroupCommit(database)
        self._issuers: dict[str, Issuer] | None = None
        self._issuers_lock = threading.Lock()
        self.issuance_listeners: list[IssuanceListener] = []
        self.revocation_listeners: list[IssuanceListener] = []
        # Background work: front ends and services add handlers and recurring jobs in init_app.
        from ca.maintenance import CORE_HANDLERS, core_recurring

        self.job_handlers: dict[str, Any] = dict(CORE_HANDLERS)
        self.recurring_jobs: dict[str, timedelta] = core_recurring(config)
        from ca import crl

        crl.install(self)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Config) -> CACore:
        """The production core: the configured database and the PKCS#11 token (opened lazily)."""
        import hsm
        from hsm.softhsm import softhsm_conf

        if config.hsm.softhsm_create and config.hsm.module is None:
            # SoftHSM reads its configuration at C_Initialize: point it at our data directory.
            os.environ["SOFTHSM2_CONF"] = str(softhsm_conf(config.data_dir / "softhsm"))
        token = hsm.Token(
            hsm.find_module(config.hsm.module), config.hsm.token_label, config.hsm.pin.resolve
        )
        return cls(config, Database.from_config(config), token)

    # -- clock, issuers -------------------------------------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    @property
    def issuers(self) -> dict[str, Issuer]:
        if self._issuers is None:
            with self._issuers_lock:
                if self._issuers is None:
                    self._issuers = load_issuers(self.database, self.keystore)
        return self._issuers

    def reload_issuers(self) -> None:
        with self._issuers_lock:
            self._issuers = None

    def issuer_by_id(self, issuer_id: int) -> Issuer | None:
        for issuer in self.issuers.values():
            if issuer.id == issuer_id:
                return issuer
        return None

    # -- signing, audit --------------------------------------------------------------------------

    def sign(self, issuer: Issuer, data: bytes) -> bytes:
        """The only place an issuer key signs a certificate; timed and counted for /metrics."""
        started = time.perf_counter()
        try:
            signature = issuer.signer.sign(data)
        except Exception as exc:
            self.metrics.hsm_errors.labels(key=issuer.name).inc()
            log.error("token signing failed for issuer %s: %s", issuer.name, type(exc).__name__)
            raise Unavailable("the signing token is not available; try again later") from exc
        self.metrics.hsm_sign_seconds.labels(key=issuer.name).observe(time.perf_counter() - started)
        return signature

    def audit(
        self,
        session: Session,
        *,
        actor: str,
        channel: str,
        action: str,
        object: str,
        details: Mapping[str, Any],
    ) -> None:
        """Append an audit entry inside the caller's transaction."""
        audit_log.append(
            session,
            self.database,
            actor=actor,
            channel=channel,
            action=action,
            object=object,
            details=details,
        )

    def audit_many(self, session: Session, entries: Sequence[audit_log.NewEntry]) -> None:
        """Append entries in order inside the caller's transaction (one lock, one INSERT)."""
        audit_log.append_many(session, self.database, entries)

    def after_issuance(self, session: Session, issuer: Issuer, row_id: int) -> None:
        for listener in self.issuance_listeners:
            listener(session, issuer, row_id)

    def after_revocation(self, session: Session, issuer: Issuer, row_id: int) -> None:
        for listener in self.revocation_listeners:
            listener(session, issuer, row_id)

    # -- operations ------------------------------------------------------------------------------

    def issue(self, request: IssuanceRequest) -> Any:
        from ca.issuance import issue

        return issue(self, request)

    def close(self) -> None:
        self.group_commit.close()
        self.database.dispose()
        close = getattr(self.keystore, "close", None)
        if close is not None:
            close()


def ensure_secret_file(ref: SecretRef, nbytes: int = 24) -> bool:
    """Create a random secret at a file reference if it does not exist (mode 0600); True if made."""
    if ref.file is None or ref.file.exists():
        return False
    ref.file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(ref.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(nbytes) + "\n")
    return True
