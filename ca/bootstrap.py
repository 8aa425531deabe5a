"""First-run set-up, idempotent: data directory, PINs, SoftHSM token, schema, CA keys and certs.

Nothing here replaces what exists: a second run finds the token, the keys and the certificates
and only reports them.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ca.config import Config
from ca.core import CACore, ensure_secret_file
from ca.issuers import InitReport, Issuer, initialise
from ca.storage import certificates as certificate_store


@dataclass(frozen=True)
class BootstrapReport:
    token_created: bool
    ca: InitReport
    audit_key_created: bool


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def prepare_token(config: Config) -> bool:
    """With softhsm_create (the default), make the PIN files and the SoftHSM token if absent."""
    if not config.hsm.softhsm_create or config.hsm.module is not None:
        return False
    from hsm.softhsm import ensure_softhsm_token

    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Fresh PIN files mean a first run: the token is created with them just below.
    created = ensure_secret_file(config.hsm.pin)
    ensure_secret_file(config.hsm.so_pin)
    ensure_softhsm_token(
        config.data_dir / "softhsm",
        config.hsm.token_label,
        config.hsm.pin.resolve(),
        config.hsm.so_pin.resolve(),
    )
    return created


def bootstrap(config: Config, core: CACore | None = None) -> tuple[CACore, BootstrapReport]:
    """Everything `privca init` does; returns the ready core and what was created."""
    token_created = prepare_token(config)
    core = core or CACore.from_config(config)
    core.database.upgrade()
    actor = cli_actor()

    def audit(session: Session, action: str, obj: str, details: dict[str, Any]) -> None:
        core.audit(session, actor=actor, channel="cli", action=action, object=obj, details=details)

    def record_ca_certificate(
        session: Session, parent: Issuer, certificate: Any, name: str
    ) -> None:
        record_subordinate(core, session, parent, certificate, name)

    report = initialise(
        config,
        core.database,
        core.keystore,
        audit=audit,
        record_ca_certificate=record_ca_certificate,
        now=core.now(),
    )
    audit_key_created = False
    if not core.keystore.has_key(config.audit.key_label):
        signer = core.keystore.generate_key(config.audit.key_type, config.audit.key_label)
        audit_key_created = True
        with core.database.write() as session:
            audit(
                session,
                "key_generated",
                "audit-key",
                {"key_uri": signer.key_uri, "key_type": config.audit.key_type},
            )
    core.reload_issuers()
    return core, BootstrapReport(token_created, report, audit_key_created)


def record_subordinate(
    core: CACore, session: Session, parent: Issuer, certificate: Any, name: str
) -> None:
    """A CA certificate signed by one of our CAs is in that CA's inventory (for its CRL/OCSP)."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    from ca.issuers import public_key_sha256

    der = certificate.public_bytes(Encoding.DER)
    now = core.now()
    row_id = certificate_store.insert_pending(
        session,
        certificate_store.PendingCertificate(
            issuer_id=parent.id,
            serial=certificate.serial_number,
            tbs_sha256=hashlib.sha256(certificate.tbs_certificate_bytes).digest(),
            subject=certificate.subject.rfc4514_string(),
            sans=[],
            profile="ca",
            channel="cli",
            requester=cli_actor(),
            owner=f"issuer:{name}",
            public_key_sha256=public_key_sha256(certificate.public_key()),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
        ),
        now,
    )
    certificate_store.mark_issued(session, row_id, der, hashlib.sha256(der).hexdigest(), now)
