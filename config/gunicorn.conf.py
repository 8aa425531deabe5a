"""Example gunicorn configuration for operators who run privca under their own gunicorn.

`privca serve` already runs gunicorn with equivalent settings taken from privca.toml; use this
file only when you need gunicorn's own options. Start it with:

    PRIVCA_CONFIG=/etc/privca/privca.toml gunicorn -c /etc/privca/gunicorn.conf.py

`privca serve` also runs the background job runner (CRL and OCSP refresh, ACME challenge
validation, audit checkpoints). Under a bare gunicorn nothing runs those jobs: run
`privca --config /etc/privca/privca.toml worker` beside it (jobs are rows in the shared
database, so one runner anywhere serves every node).

Every value can be overridden on the command line or in GUNICORN_CMD_ARGS.
"""

from __future__ import annotations

import gc
import os
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import Any

from ca.gunicorn_worker import BalancedThreadWorker, ConnectionCounts
from ca.gunicorn_worker import child_exit as _balance_child_exit
from ca.gunicorn_worker import pre_fork as _balance_pre_fork

# The app factory reads PRIVCA_CONFIG (one TOML file plus PRIVCA_ environment overrides).
wsgi_app = "ca.web.app:create_app()"
raw_env = [f"PRIVCA_CONFIG={os.environ.get('PRIVCA_CONFIG', '/etc/privca/privca.toml')}"]

# PKCS#11 must be initialised in each worker after the fork, never in the master: a token
# session does not survive fork(), and a library initialised before it is undefined behaviour.
# With preload_app off, create_app() (which opens the token) runs inside every worker.
preload_app = False

# 8443 keeps the service unprivileged; bind 443 through the systemd unit's
# CAP_NET_BIND_SERVICE or a load balancer in front.
bind = [os.environ.get("PRIVCA_BIND", "[::]:8443")]

# Signing scales with processes, not threads: one token lock per process serialises signing,
# so add workers for throughput and keep a few threads each for slow clients and database waits.
workers = int(os.environ.get("PRIVCA_WORKERS", min(os.cpu_count() or 1, 8)))
# gthread, plus an even spread of keep-alive connections over the workers: they share a count
# of the connections each holds, and a worker holding more than another lets that one accept
# first (ca/gunicorn_worker.py). The arbiter hands out the count slots in pre_fork/child_exit.
worker_class = "ca.gunicorn_worker.BalancedThreadWorker"
BalancedThreadWorker.counts = ConnectionCounts(2 * workers + 2)
threads = 4
# ACME finalize and EST enrollments sign on the request path; 30 s covers a slow network HSM.
timeout = 30
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak in a vendor PKCS#11 module stays bounded.
max_requests = 10000
max_requests_jitter = 1000

# Request size limits in front of the app's own (server.max_body_bytes in privca.toml).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384

# TLS is served natively: EST needs it, and client-certificate authentication needs the peer
# certificate, which only the TLS endpoint sees. CERT_OPTIONAL asks for a client certificate
# without requiring one, so ACME, OCSP and CRL clients connect without one.
certfile = "/etc/privca/tls/server.crt"
keyfile = "/etc/privca/tls/server.key"
ca_certs = "/etc/privca/tls/client-ca.pem"  # CAs whose certificates may authenticate to EST
cert_reqs = ssl.CERT_OPTIONAL

# Only these addresses may set X-Forwarded-* (and, through privca.toml's server.trusted_proxies,
# the client-certificate header). Never "*" unless nothing else can reach the port.
forwarded_allow_ips = "127.0.0.1,::1"

# Logs to stdout/stderr for journald or the container runtime; privca's own request log is
# structured JSON with a request id, so gunicorn's access log stays off to avoid duplicates.
accesslog = None
errorlog = "-"
loglevel = "info"

# gunicorn 27's control socket (for gunicornc) defaults to $HOME/.gunicorn, which a service
# account often cannot write; privca does not use it. Older gunicorn ignores the setting.
control_socket_disable = True

# Workers' heartbeat files on tmpfs: a disk stall must not look like a hung worker. gunicorn
# creates them with mkstemp, so the shared directory is safe.
_SHM = Path("/dev/shm")  # noqa: S108
worker_tmp_dir = str(_SHM) if _SHM.is_dir() else None

# Counters and histograms from all workers are merged through files in this directory
# (prometheus_client multiprocess mode); it must be empty when the master starts. Under the
# systemd unit that is /run/privca/metrics; elsewhere a fresh private directory.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    _runtime = os.environ.get("RUNTIME_DIRECTORY")
    if _runtime:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(_runtime, "metrics")
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="privca-metrics-")
_METRICS_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server: Any) -> None:
    """Start every run with an empty metrics directory (stale files would double-count)."""
    shutil.rmtree(_METRICS_DIR, ignore_errors=True)
    os.makedirs(_METRICS_DIR, mode=0o700, exist_ok=True)


def post_fork(server: Any, worker: Any) -> None:
    """Runs in the new worker, before the app is loaded.

    Nothing PKCS#11 belongs in the master or in this hook's caller: the app factory opens the
    token when the worker loads the app, after this point. If you add a hook that touches the
    token, it must run here or later, never in on_starting or with preload_app = True.
    """
    server.log.info("worker %s forked", worker.pid)


def pre_fork(server: Any, worker: Any) -> None:
    """Give the new worker a slot in the shared connection counts."""
    _balance_pre_fork(server, worker)


def post_worker_init(worker: Any) -> None:
    """Keep what the worker built at start (app, token sessions) out of the garbage collector's
    full passes, which otherwise pause every request of the worker while they walk it."""
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    """Free the dead worker's connection-count slot, and drop its live gauges so /metrics does
    not report them forever."""
    from prometheus_client import multiprocess

    _balance_child_exit(server, worker)
    multiprocess.mark_process_dead(worker.pid)


def ssl_context(conf: Any, default_ssl_context_factory: Any) -> ssl.SSLContext:
    """One TLS context per worker (gunicorn would build one per connection), and client
    certificates verified to their anchor but not against the clock: EST answers an expired
    device certificate with 403 and the reason instead of a bare TLS alert."""
    from ca.serve import server_tls_context

    return server_tls_context(conf, default_ssl_context_factory)
