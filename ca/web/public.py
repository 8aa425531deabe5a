"""Unauthenticated core endpoints: health, readiness, metrics, CA certificates."""

from __future__ import annotations

import logging
from collections import Counter as Tally
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, Response
from sqlalchemy import case, func, select

from ca import crl, metrics
from ca.core import CACore
from ca.storage.models import AuditCheckpointRow, AuditHeadRow, CertificateRow, JobRow
from ca.web.errors import json_error

log = logging.getLogger("privca.web")


def init_app(app: Flask, core: CACore) -> None:
    blueprint = Blueprint("privca_public", __name__)

    @blueprint.get("/healthz")
    def healthz() -> Any:
        return {"status": "alive"}

    @blueprint.get("/readyz")
    def readyz() -> Any:
        checks: dict[str, str] = {}
        try:
            core.database.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable ({type(exc).__name__})"
        ping = getattr(core.keystore, "ping", None)
        try:
            if ping is not None:
                ping()
            checks["token"] = "ok"  # noqa: S105 - the PKCS#11 token
        except Exception as exc:
            checks["token"] = f"unreachable ({type(exc).__name__})"
        ready = all(v == "ok" for v in checks.values())
        return {
            "status": "ready" if ready else "not ready",
            "checks": checks,
        }, 200 if ready else 503

    @blueprint.get("/metrics")
    def metrics_endpoint() -> Response:
        collector = metrics.InventoryCollector(lambda: read_inventory(core))
        return Response(metrics.render(collector), mimetype="text/plain; version=0.0.4")

    @blueprint.get("/ca/<name>.crt")
    def ca_certificate(name: str) -> Any:
        issuer = core.issuers.get(name)
        if issuer is None:
            return json_error(404, "not_found", f'no issuer named "{name}"')
        response = Response(issuer.certificate_der, mimetype="application/pkix-cert")
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response

    @blueprint.get("/ca/<name>/chain.pem")
    def ca_chain(name: str) -> Any:
        issuer = core.issuers.get(name)
        if issuer is None:
            return json_error(404, "not_found", f'no issuer named "{name}"')
        return Response(issuer.chain_pem, mimetype="application/pem-certificate-chain")

    app.register_blueprint(blueprint)


def read_inventory(core: CACore) -> dict[str, Any]:
    """Counts for the inventory gauges, by issuer name."""
    now = core.now()
    names = {issuer.id: issuer.name for issuer in core.issuers.values()}
    expiry: Tally[tuple[str, str]] = Tally()
    status: dict[tuple[str, str], int] = {}
    with core.database.read() as session:
        bucket = case(
            *[
                (CertificateRow.not_after < now + timedelta(days=days), label)
                for label, days in metrics.EXPIRY_BUCKETS
            ],
            else_="ge_90d",
        )
        for issuer_id, label, count in session.execute(
            select(CertificateRow.issuer_id, bucket, func.count())
            .where(CertificateRow.status == "issued")
            .group_by(CertificateRow.issuer_id, bucket)
        ):
            expiry[(names.get(issuer_id, str(issuer_id)), label)] += count
        for issuer_id, state, count in session.execute(
            select(CertificateRow.issuer_id, CertificateRow.status, func.count()).group_by(
                CertificateRow.issuer_id, CertificateRow.status
            )
        ):
            status[(names.get(issuer_id, str(issuer_id)), state)] = count
        head = session.get(AuditHeadRow, 1)
        last_checkpoint = session.scalar(select(func.max(AuditCheckpointRow.seq))) or 0
        jobs = dict(
            session.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
        )
    for name in names.values():
        for label, _ in (*metrics.EXPIRY_BUCKETS, ("ge_90d", 0)):
            expiry.setdefault((name, label), 0)
    return {
        **crl.freshness(core),
        "expiry": dict(expiry),
        "status": status,
        "audit_backlog": (head.seq if head else 0) - last_checkpoint,
        "jobs": jobs,
    }
