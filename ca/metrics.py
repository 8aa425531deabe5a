"""Prometheus metrics, correct under several gunicorn workers.

Counters and histograms go through prometheus_client's multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set (`privca serve` sets it before the workers start); gauges that
describe the inventory (certificates by days to expiry, CRL age, audit backlog) are computed from
the database at scrape time, so every worker reports the same truth.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_REGISTRY = CollectorRegistry()
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

_ISSUANCE = Counter(
    "privca_issuance_total",
    "Issuance requests by channel and result (issued, denied, rejected, error)",
    ["channel", "result"],
    registry=_REGISTRY,
)
_ISSUANCE_SECONDS = Histogram(
    "privca_issuance_duration_seconds",
    "Time from request to certificate, by channel",
    ["channel"],
    buckets=_LATENCY_BUCKETS,
    registry=_REGISTRY,
)
_HSM_SIGN_SECONDS = Histogram(
    "privca_hsm_sign_duration_seconds",
    "Token signing latency by key",
    ["key"],
    buckets=_LATENCY_BUCKETS,
    registry=_REGISTRY,
)
_HSM_ERRORS = Counter(
    "privca_hsm_errors_total", "Token signing failures by key", ["key"], registry=_REGISTRY
)
_REVOCATIONS = Counter(
    "privca_revocations_total",
    "Revocations by channel and reason",
    ["channel", "reason"],
    registry=_REGISTRY,
)
_JOBS_FAILED = Counter(
    "privca_jobs_failed_total",
    "Background job attempts that failed, by kind",
    ["kind"],
    registry=_REGISTRY,
)
_JOBS_DONE = Counter(
    "privca_jobs_completed_total",
    "Background jobs completed, by kind",
    ["kind"],
    registry=_REGISTRY,
)
_RATE_LIMITED = Counter(
    "privca_rate_limited_total",
    "Requests refused by a rate limit",
    ["channel", "limit"],
    registry=_REGISTRY,
)
_HTTP_ERRORS = Counter(
    "privca_http_errors_total",
    "Error responses by front end and protocol error type",
    ["frontend", "type"],
    registry=_REGISTRY,
)

EXPIRY_BUCKETS = (("expired", 0), ("lt_7d", 7), ("lt_30d", 30), ("lt_90d", 90))


class Metrics:
    """The process's metric handles (module-level objects: registration happens once)."""

    issuance = _ISSUANCE
    issuance_seconds = _ISSUANCE_SECONDS
    hsm_sign_seconds = _HSM_SIGN_SECONDS
    hsm_errors = _HSM_ERRORS
    revocations = _REVOCATIONS
    jobs_failed = _JOBS_FAILED
    jobs_completed = _JOBS_DONE
    rate_limited = _RATE_LIMITED
    http_errors = _HTTP_ERRORS

    # Label children by label values: labels() validates and locks on every call, which the
    # issuance path paid on every certificate. A child stays valid for the process's lifetime
    # (nothing here removes label sets).
    _issuance_children: dict[tuple[str, str], Any] = {}
    _issuance_seconds_children: dict[str, Any] = {}

    def observe_issuance(self, channel: str, result: str, seconds: float) -> None:
        counter = self._issuance_children.get((channel, result))
        if counter is None:
            counter = self.issuance.labels(channel=channel, result=result)
            self._issuance_children[(channel, result)] = counter
        counter.inc()
        if result == "issued":
            histogram = self._issuance_seconds_children.get(channel)
            if histogram is None:
                histogram = self.issuance_seconds.labels(channel=channel)
                self._issuance_seconds_children[channel] = histogram
            histogram.observe(seconds)


class InventoryCollector(Collector):
    """Gauges read from the database at scrape time (identical from every worker)."""

    def __init__(self, read_inventory: Callable[[], dict[str, Any]]) -> None:
        self._read_inventory = read_inventory

    def collect(self) -> Iterable[GaugeMetricFamily]:
        inventory = self._read_inventory()
        expiry = GaugeMetricFamily(
            "privca_certificates_by_expiry",
            "Valid (issued, not revoked) certificates by time left, per issuer",
            labels=["issuer", "bucket"],
        )
        for (issuer, bucket), count in sorted(inventory["expiry"].items()):
            expiry.add_metric([issuer, bucket], count)
        yield expiry
        status = GaugeMetricFamily(
            "privca_certificates", "Certificates by status, per issuer", labels=["issuer", "status"]
        )
        for (issuer, state), count in sorted(inventory["status"].items()):
            status.add_metric([issuer, state], count)
        yield status
        backlog = GaugeMetricFamily(
            "privca_audit_unverified_entries",
            "Audit entries written since the last signed checkpoint",
        )
        backlog.add_metric([], inventory["audit_backlog"])
        yield backlog
        jobs = GaugeMetricFamily("privca_jobs", "Background jobs by status", labels=["status"])
        for state, count in sorted(inventory["jobs"].items()):
            jobs.add_metric([state], count)
        yield jobs
        for name, help_text, key in (
            ("privca_crl_age_seconds", "Seconds since the current CRL's thisUpdate", "crl_age"),
            (
                "privca_crl_next_update_seconds",
                "Seconds until the current CRL's nextUpdate",
                "crl_next_update",
            ),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["issuer"])
            for issuer, value in sorted(inventory.get(key, {}).items()):
                family.add_metric([issuer], value)
            yield family


def render(extra: Collector | None = None) -> bytes:
    """The exposition text: all workers' counters plus the database-derived gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = _REGISTRY if extra is None else _merged(extra)
        return generate_latest(registry)
    if extra is not None:
        registry.register(extra)
    return generate_latest(registry)


def _merged(extra: Collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    for collector in list(_REGISTRY._collector_to_names):
        registry.register(collector)
    registry.register(extra)
    return registry
