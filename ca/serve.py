"""`privca serve`: gunicorn with the app and a job runner per worker, TLS on by default.

The master process never touches PKCS#11: each worker builds its own app and core after the fork
(no preload), so the token is initialised once per worker. Counters are shared across workers via
prometheus_client's multiprocess directory, which is emptied at start.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import shutil
import ssl
import sys
from collections.abc import Callable
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.config import Config
from ca.issuance_request import Identifier, IssuanceRequest
from ca.processes import start_listener_process, stop_listener_processes

if TYPE_CHECKING:
    from ca.core import CACore

log = logging.getLogger("privca.serve")

RENEW_SERVER_CERTIFICATE_BEFORE = timedelta(days=30)


def tls_paths(config: Config) -> tuple[Path, Path]:
    if config.server.tls_cert and config.server.tls_key:
        return config.server.tls_cert, config.server.tls_key
    directory = config.data_dir / "tls"
    return directory / "server.crt", directory / "server.key"


def ensure_server_certificate(core: CACore) -> tuple[Path, Path]:
    """The HTTPS certificate: the configured files, or one from our own CA for `tls_names`.

    Its key is a software key in the data directory (mode 0600): gunicorn's TLS needs a key file,
    and this key only protects transport, never issues anything.
    """
    config = core.config
    cert_path, key_path = tls_paths(config)
    if config.server.tls_cert:
        return cert_path, key_path
    names = tuple(config.server.tls_names)
    if _current_certificate_fits(core, cert_path, key_path, names):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    identifiers = []
    for name in names:
        try:
            identifiers.append(Identifier("ip", str(ipaddress.ip_address(name))))
        except ValueError:
            identifiers.append(Identifier("dns", name.lower()))
    from ca.issuance import issue_with_profile
    from ca.profiles import server_profile

    issuer_name = config.issuers[0].name
    issued = issue_with_profile(
        core,
        IssuanceRequest(
            channel="cli",
            requester="privca-serve",
            profile="privca-server",
            public_key=key.public_key(),
            identifiers=tuple(identifiers),
            owner="privca-serve",
        ),
        server_profile(issuer_name),
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The chain without the root: clients are given the root separately.
    chain = issued.pem + b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in issued.issuer.chain[:-1]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Written aside, then renamed; a crash between the renames leaves a pair that does not
    # match, which _current_certificate_fits() notices on the next start.
    for path, data in ((key_path, key_pem), (cert_path, chain)):
        partial = path.with_name(path.name + ".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)
    return cert_path, key_path


def _current_certificate_fits(
    core: CACore, cert_path: Path, key_path: Path, names: tuple[str, ...]
) -> bool:
    """The files exist, belong together, name exactly `names` and are not about to expire."""
    try:
        current = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, IndexError):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != current.public_key().public_bytes(serialization.Encoding.DER, spki):
        return False
    try:
        sans = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    }
    return (
        have == {n.lower() for n in names}
        and current.not_valid_after_utc - core.now() > RENEW_SERVER_CERTIFICATE_BEFORE
    )


def client_ca_bundle(core: CACore) -> Path:
    """Every CA we run plus the anchors front ends declare, for TLS client certificates."""
    from ca.web.app import create_app

    app = create_app(core=core)
    path = core.config.data_dir / "tls" / "client-ca.pem"
    pems = b"".join(issuer.chain_pem for issuer in core.issuers.values())
    pems += b"".join(app.extensions["privca.tls_client_anchors"])
    if core.config.server.tls_client_ca is not None:
        pems += core.config.server.tls_client_ca.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(pems)
    return path


def served_urls(config: Config) -> dict[str, str]:
    from ca.urls import PublicURLs

    urls = PublicURLs(config.server.public_base_url, config.server.revocation_base_url)
    mounted = {ep.name for ep in entry_points(group="privca.frontends")}
    listing = {"Admin API": urls.admin_api() + "/openapi.json"}
    if "acme" in mounted:
        listing["ACME directory"] = urls.acme_directory()
    if "est" in mounted:
        listing["EST"] = urls.est()
    if "ocsp" in mounted:
        listing["OCSP"] = urls.ocsp()
    for issuer in (config.root, *config.issuers):
        listing[f"CRL ({issuer.name})"] = urls.crl(issuer.name)
    listing["Root certificate"] = urls.ca_certificate(config.root.name)
    listing["Health"] = f"{config.server.public_base_url}/readyz"
    return listing


def prepare_metrics_directory(config: Config) -> None:
    """Empty the shared metrics directory and point prometheus_client at it.

    Must run before ca.metrics is first imported in this process: prometheus_client decides at
    metric creation whether values live in shared files (all workers) or in process memory.
    """
    if "ca.metrics" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("metrics were created before the multiprocess directory was set")
    multiproc = config.data_dir / "metrics"
    shutil.rmtree(multiproc, ignore_errors=True)
    multiproc.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)


def run(config: Config, core: CACore) -> None:
    """Start gunicorn in the foreground (returns when it stops)."""
    from gunicorn.app.base import BaseApplication

    if config.path is not None:
        os.environ["PRIVCA_CONFIG"] = str(Path(config.path).resolve())

    from ca.gunicorn_worker import BalancedThreadWorker, ConnectionCounts
    from ca.gunicorn_worker import pre_fork as balance_pre_fork

    # Twice the workers: a reload (HUP) starts the new workers before the old ones exit.
    BalancedThreadWorker.counts = ConnectionCounts(2 * config.server.workers + 2)
    options: dict[str, Any] = {
        "bind": f"[{config.server.listen_host}]:{config.server.listen_port}"
        if ":" in config.server.listen_host
        else f"{config.server.listen_host}:{config.server.listen_port}",
        "workers": config.server.workers,
        "worker_class": BalancedThreadWorker,
        "threads": config.server.threads,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": config.logging.level,
        "timeout": 60,
        "control_socket_disable": True,
        "graceful_timeout": 10,
        "keepalive": 30,
        "forwarded_allow_ips": ",".join(config.server.trusted_proxies) or "127.0.0.1",
        "pre_fork": balance_pre_fork,
        "post_worker_init": _post_worker_init,
        "worker_exit": _worker_exit,
        "child_exit": _child_exit,
    }
    if config.server.tls:
        cert, key = ensure_server_certificate(core)
        options.update(
            {
                "certfile": str(cert),
                "keyfile": str(key),
                "ca_certs": str(client_ca_bundle(core)),
                "cert_reqs": ssl.CERT_OPTIONAL,
                "ssl_context": server_tls_context,
            }
        )
    core.close()  # the master keeps no token session or pool across the fork

    class PrivcaApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from ca.web.app import create_app

            return create_app(config)

    listeners = extra_listeners(config)
    print("privca is serving:", flush=True)
    for label, url in served_urls(config).items():
        print(f"  {label + ':':<24} {url}", flush=True)
    for listener in listeners:
        print(f"  {listener.label + ':':<24} {listener.url}", flush=True)
    if config.server.tls:
        print(f"  {'Trust anchor (root):':<24} {config.data_dir / 'tls' / 'root.pem'}", flush=True)
    sys.stdout.flush()
    processes = [start_listener_process(listener) for listener in listeners]
    try:
        PrivcaApplication().run()
    finally:
        stop_listener_processes(processes)


def extra_listeners(config: Config) -> list[Any]:
    """Listeners that front ends run beside gunicorn (entry points "privca.listeners").

    Each entry point takes the Config and returns None or an object with `label`, `url` and
    `run()`, which is called in a process of its own forked from this one; it may raise
    ConfigError here, before anything is forked.
    """
    found = []
    for entry_point in entry_points(group="privca.listeners"):
        listener = entry_point.load()(config)
        if listener is not None:
            found.append(listener)
    return found


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME; Python's ssl passes verify flags through unchanged.
_NO_CHECK_TIME = 0x200000
_tls_contexts: dict[tuple[int, tuple[float, ...]], ssl.SSLContext] = {}


def server_tls_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """gunicorn asks for a context on every connection; build one per process and per version
    of the certificate files (a replaced file is picked up without a restart, as before).

    Client certificates are still verified up to a trusted anchor, but not against the clock:
    OpenSSL would abort the handshake for an expired one and the device would see only a TLS
    alert. Every consumer of client certificates (EST) checks validity itself and answers an
    expired or not yet valid certificate with 403 and the reason.
    """
    files = (conf.certfile, conf.keyfile, conf.ca_certs)
    stamp = tuple(os.stat(f).st_mtime if f else 0.0 for f in files)
    key = (os.getpid(), stamp)
    context = _tls_contexts.get(key)
    if context is None:
        context = default_factory()
        context.verify_flags |= _NO_CHECK_TIME
        _tls_contexts.clear()
        _tls_contexts[key] = context
    return context


def _post_worker_init(worker: Any) -> None:
    """Freeze the startup heap; start this worker's job runner thread (jobs are claimed safely
    across workers and nodes)."""
    # What the worker has built by now (app, core, token sessions, compiled statements) lives
    # as long as the process: keep it out of the collector's full passes, which walked it all
    # and paused every request of the worker meanwhile (EST at one connection: p99 35-41 ms
    # without this, 6-7 ms with it). The OCSP listener workers do the same. Collected first, so
    # that start-up garbage is freed rather than frozen for good.
    gc.collect()
    gc.freeze()
    app = worker.wsgi
    core = getattr(app, "extensions", {}).get("privca.core")
    if core is None or not core.config.server.run_jobs:
        return
    from ca.maintenance import start_job_thread

    worker._privca_runner = start_job_thread(
        core, defer=getattr(worker, "busier_than_another", None)
    )


def _worker_exit(server: Any, worker: Any) -> None:
    runner = getattr(worker, "_privca_runner", None)
    if runner is not None:
        runner.stop()


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    from ca.gunicorn_worker import child_exit as balance_child_exit

    balance_child_exit(server, worker)
    multiprocess.mark_process_dead(worker.pid)


def write_root_pem(core: CACore) -> Path:
    """The root certificate as PEM in the data directory, for clients to trust."""
    root = core.issuers[core.config.root.name]
    path = core.config.data_dir / "tls" / "root.pem"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    return path
