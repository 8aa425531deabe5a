"""What the CA holds, in plain dictionaries for the CLI and the admin API: certificates, issuers,
tokens, and the audit log's verification against the token's audit key."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from ca import audit
from ca.api_tokens import TokenInfo
from ca.core import CACore
from ca.errors import Conflict, NotFound
from ca.issuers import Issuer
from ca.revocation import REASON_NAMES, normalise_serial
from ca.storage import certificates as certificate_store
from ca.storage.models import CertificateRow
from ca.urls import PublicURLs


def describe_certificate(row: CertificateRow, issuer_names: dict[int, str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "issuer": issuer_names.get(row.issuer_id, str(row.issuer_id)),
        "serial": row.serial,
        "status": row.status,
        "subject": row.subject,
        "sans": json.loads(row.sans),
        "profile": row.profile,
        "channel": row.channel,
        "requester": row.requester,
        "owner": row.owner,
        "not_before": row.not_before.isoformat(),
        "not_after": row.not_after.isoformat(),
        "issued_at": row.issued_at.isoformat() if row.issued_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "revocation_reason": REASON_NAMES.get(row.revocation_reason)
        if row.revocation_reason is not None
        else None,
        "sha256": row.fingerprint_sha256,
    }


def _issuer_names(core: CACore) -> dict[int, str]:
    return {issuer.id: issuer.name for issuer in core.issuers.values()}


def list_certificates(
    core: CACore,
    *,
    status: str | None = None,
    issuer: str | None = None,
    owner: str | None = None,
    profile: str | None = None,
    expiring_within: timedelta | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Certificates in id order; `expiring_within` keeps valid ones that expire within that time."""
    issuer_id = None
    if issuer is not None:
        found = core.issuers.get(issuer)
        if found is None:
            raise NotFound(f'no issuer named "{issuer}"')
        issuer_id = found.id
    now = core.now()
    statement = certificate_store.query_certificates(
        issuer_id=issuer_id,
        status="issued" if expiring_within is not None and status is None else status,
        not_after_before=now + expiring_within if expiring_within is not None else None,
        not_after_after=now if expiring_within is not None else None,
        owner=owner,
        profile=profile,
        after_id=after_id,
        limit=limit,
    )
    names = _issuer_names(core)
    with core.database.read() as session:
        return [describe_certificate(row, names) for row in session.scalars(statement)]


def find_certificate(core: CACore, serial: str, issuer: str | None = None) -> CertificateRow:
    serial = normalise_serial(serial)
    issuer_id = None
    if issuer is not None:
        found = core.issuers.get(issuer)
        if found is None:
            raise NotFound(f'no issuer named "{issuer}"')
        issuer_id = found.id
    with core.database.read() as session:
        rows = certificate_store.find_by_serial(session, serial, issuer_id)
    if not rows:
        raise NotFound(f"no certificate with serial {serial}")
    if len(rows) > 1:
        raise Conflict(f"serial {serial} exists under several issuers; name the issuer")
    return rows[0]


def show_certificate(core: CACore, serial: str, issuer: str | None = None) -> dict[str, Any]:
    row = find_certificate(core, serial, issuer)
    described = describe_certificate(row, _issuer_names(core))
    if row.der is not None:
        from cryptography import x509

        described["certificate"] = (
            x509.load_der_x509_certificate(row.der).public_bytes(Encoding.PEM).decode()
        )
    return described


def describe_issuer(issuer: Issuer, urls: PublicURLs) -> dict[str, Any]:
    certificate = issuer.certificate
    return {
        "name": issuer.name,
        "key_type": issuer.key_type,
        "key_uri": issuer.signer.key_uri if issuer.signer is not None else None,
        "subject": certificate.subject.rfc4514_string(),
        "parent": issuer.parent_name,
        "serial": format(certificate.serial_number, "x"),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "certificate_url": urls.ca_certificate(issuer.name),
        "crl_url": urls.crl(issuer.name),
        "chain": issuer.chain_pem.decode(),
    }


def describe_token(info: TokenInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "scopes": sorted(info.scopes),
        "created_at": info.created_at.isoformat(),
        "revoked": info.revoked,
        "last_used_at": info.last_used_at.isoformat() if info.last_used_at else None,
    }


def audit_signer(core: CACore) -> Any:
    return core.keystore.find_signer(core.config.audit.key_label)


def verify_audit(core: CACore, expect_seq: int = 0) -> Any:
    """Verify the whole chain; checkpoint signatures are checked with the token's audit key."""
    signer = audit_signer(core)
    return audit.verify(core.database, {signer.key_uri: signer.public_key}, expect_seq=expect_seq)
