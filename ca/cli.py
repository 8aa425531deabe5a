"""The `privca` command line. Each command loads and validates the configuration first.

Exit codes: 0 success, 1 the operation was refused or failed (message on stderr), 2 bad usage or
configuration. Secrets are never taken as arguments: PINs come from the configured references.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ca.config import Config, load_config, parse_duration
from ca.errors import ConfigError, CoreError
from hsm.errors import HSMError

CLI_GROUP = "privca.cli"
EXIT_REFUSED = 1
EXIT_USAGE = 2


def _core(config: Config) -> Any:
    """The core for a command that uses an initialised CA (only init and serve create things)."""
    from ca.core import CACore

    return CACore.from_config(config)


def cmd_init(args: argparse.Namespace, config: Config) -> int:
    from ca.bootstrap import bootstrap
    from ca.serve import write_root_pem

    core, report = bootstrap(config)
    try:
        print(f"data directory: {config.data_dir}")
        print(f"token: {config.hsm.token_label}" + (" (created)" if report.token_created else ""))
        for name in report.ca.created_keys:
            print(f"key generated in the token: {name}")
        for name in report.ca.created_certificates:
            print(f"CA certificate created: {name}")
        for name in report.ca.awaiting_certificate:
            print(
                f"awaiting a certificate from the offline root: {name} "
                f"(export its CSR with `privca ca csr {name}`)"
            )
        if report.audit_key_created:
            print("audit key generated in the token")
        if config.root.name in core.issuers:
            print(f"root certificate: {write_root_pem(core)}")
        for issuer in core.issuers.values():
            print(
                f"issuer {issuer.name}: {issuer.certificate.subject.rfc4514_string()} "
                f"({issuer.key_type}) until {issuer.certificate.not_valid_after_utc:%Y-%m-%d}"
            )
    finally:
        core.close()
    return 0


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from ca.serve import prepare_metrics_directory

    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    prepare_metrics_directory(config)  # before anything imports ca.metrics
    from ca.bootstrap import bootstrap
    from ca.serve import run, write_root_pem

    core, _ = bootstrap(config)
    write_root_pem(core)
    run(config, core)
    return 0


def cmd_worker(args: argparse.Namespace, config: Config) -> int:
    from ca.jobs import JobRunner
    from ca.maintenance import RecurringSchedule
    from ca.web.app import create_app

    core = _core(config)
    create_app(core=core)  # front ends register their job handlers in init_app
    runner = JobRunner(core, core.job_handlers)
    if args.once:
        print(f"ran {runner.run_until_idle()} job(s)")
        return 0
    try:
        runner.serve_forever(periodic=RecurringSchedule(core))
    except KeyboardInterrupt:
        runner.stop()
    return 0


def cmd_issue(args: argparse.Namespace, config: Config) -> int:
    from ca.bootstrap import cli_actor
    from ca.csr import parse_csr
    from ca.issuance_request import IssuanceRequest

    core = _core(config)
    if args.validity_days is not None and not 1 <= args.validity_days <= 36500:
        raise CoreErrorUsage("--validity-days must be from 1 to 36500")
    csr = parse_csr(Path(args.csr).read_bytes())
    actor = cli_actor()
    issued = core.issue(
        IssuanceRequest(
            channel="cli",
            requester=actor,
            profile=args.profile,
            public_key=csr.public_key,
            identifiers=csr.identifiers,
            subject=csr.subject,
            validity_seconds=args.validity_days * 86400 if args.validity_days else None,
            requested_ekus=csr.requested_ekus,
            owner=args.owner or actor,
            csr_der=csr.der,
        )
    )
    output = issued.chain_pem if not args.leaf_only else issued.pem
    if args.out:
        Path(args.out).write_bytes(output)
        print(
            f"issued serial {issued.serial_hex} by {issued.issuer.name}; written to {args.out}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(output.decode())
    return 0


def cmd_revoke(args: argparse.Namespace, config: Config) -> int:
    from ca.bootstrap import cli_actor
    from ca.revocation import parse_reason, revoke

    invalidity = None
    if args.invalidity_date:
        invalidity = datetime.fromisoformat(args.invalidity_date)
        if invalidity.tzinfo is None:
            raise CoreErrorUsage("--invalidity-date needs a time zone, e.g. 2026-01-01T00:00:00Z")
    core = _core(config)
    result = revoke(
        core,
        args.serial,
        issuer_name=args.issuer,
        reason=parse_reason(args.reason),
        invalidity_date=invalidity,
        actor=cli_actor(),
        channel="cli",
    )
    print(
        f"revoked {result.serial} ({result.issuer}) for {result.reason_name} "
        f"at {result.revoked_at.isoformat()}"
    )
    return 0


def cmd_certs_list(args: argparse.Namespace, config: Config) -> int:
    from ca import inventory

    core = _core(config)
    within = (
        timedelta(seconds=parse_duration(args.expiring_within, "--expiring-within"))
        if args.expiring_within
        else None
    )
    rows: list[dict[str, Any]] = []
    after = 0
    while True:  # bounded by the table: keyset pages of 1000 until a short page
        page = inventory.list_certificates(
            core,
            status=args.status,
            issuer=args.issuer,
            owner=args.owner,
            profile=args.profile,
            expiring_within=within,
            after_id=after,
            limit=1000,
        )
        rows.extend(page)
        if len(page) < 1000 or (args.limit and len(rows) >= args.limit):
            break
        after = page[-1]["id"]
    if args.limit:
        rows = rows[: args.limit]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'SERIAL':<34} {'ISSUER':<12} {'STATUS':<8} {'NOT AFTER':<20} SUBJECT / SANS")
    for row in rows:
        sans = ",".join(row["sans"])
        print(
            f"{row['serial']:<34} {row['issuer']:<12} {row['status']:<8} "
            f"{row['not_after'][:19]:<20} {row['subject']} {sans}"
        )
    print(f"{len(rows)} certificate(s)", file=sys.stderr)
    return 0


def cmd_certs_show(args: argparse.Namespace, config: Config) -> int:
    from ca import inventory

    core = _core(config)
    print(json.dumps(inventory.show_certificate(core, args.serial, args.issuer), indent=2))
    return 0


def cmd_audit_verify(args: argparse.Namespace, config: Config) -> int:
    from ca import inventory

    core = _core(config)
    result = inventory.verify_audit(core, expect_seq=args.expect_seq)
    if result.ok:
        print(
            f"audit log verified: {result.entries_checked} entries, "
            f"{result.checkpoints_checked} signed checkpoint(s)"
        )
        return 0
    print(f"audit log FAILED verification: {result.problem}", file=sys.stderr)
    return EXIT_REFUSED


def cmd_audit_export(args: argparse.Namespace, config: Config) -> int:
    from ca import audit

    core = _core(config)
    if args.out:
        with open(args.out, "w") as handle:
            count = audit.export(core.database, handle, since_seq=args.since)
        print(
            f"exported {count} entries to {args.out}; keep the last entry's seq to check "
            "later with `privca audit verify --expect-seq`",
            file=sys.stderr,
        )
    else:
        audit.export(core.database, sys.stdout, since_seq=args.since)
    return 0


def cmd_audit_checkpoint(args: argparse.Namespace, config: Config) -> int:
    from ca import audit, inventory

    core = _core(config)
    checkpoint = audit.write_checkpoint(core.database, inventory.audit_signer(core))
    print(
        "nothing new since the last checkpoint"
        if checkpoint is None
        else f"checkpoint signed at entry {checkpoint.seq}"
    )
    return 0


def cmd_token_create(args: argparse.Namespace, config: Config) -> int:
    from ca import api_tokens
    from ca.bootstrap import cli_actor

    core = _core(config)
    scopes = api_tokens.parse_scopes(args.scope)
    with core.database.write() as session:
        token, info = api_tokens.create_token(session, args.name, scopes, core.now())
        core.audit(
            session,
            actor=cli_actor(),
            channel="cli",
            action="api_token_created",
            object=f"token:{info.id}",
            details={"name": args.name, "scopes": sorted(scopes)},
        )
    if args.out:
        import os

        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        print(f"token {info.id} ({args.name}) written to {args.out}", file=sys.stderr)
    else:
        print(token)
        print(
            f"token {info.id} ({args.name}, scopes {' '.join(sorted(scopes))}); "
            "it is shown once and stored only as a hash",
            file=sys.stderr,
        )
    return 0


def cmd_token_list(args: argparse.Namespace, config: Config) -> int:
    from ca import api_tokens, inventory

    core = _core(config)
    with core.database.read() as session:
        tokens = [inventory.describe_token(t) for t in api_tokens.list_tokens(session)]
    print(json.dumps(tokens, indent=2))
    return 0


def cmd_token_revoke(args: argparse.Namespace, config: Config) -> int:
    from ca import api_tokens
    from ca.bootstrap import cli_actor

    core = _core(config)
    with core.database.write() as session:
        info = api_tokens.revoke_token(session, args.id)
        core.audit(
            session,
            actor=cli_actor(),
            channel="cli",
            action="api_token_revoked",
            object=f"token:{info.id}",
            details={"name": info.name},
        )
    print(f"token {info.id} ({info.name}) revoked")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, config: Config) -> int:
    from ca.storage import Database

    database = Database.from_config(config)
    database.upgrade()
    database.dispose()
    print("database schema is up to date")
    return 0


def cmd_config_check(args: argparse.Namespace, config: Config) -> int:
    print(f"configuration OK ({config.path or 'embedded defaults'})")
    print(f"  data directory: {config.data_dir}")
    print(f"  database: {config.database_url.split('@')[-1]}")
    print(f"  token: {config.hsm.token_label} via {config.hsm.module or 'SoftHSM (auto)'}")
    print(f"  issuers: {', '.join(i.name for i in config.issuers)} under {config.root.name}")
    print(f"  profiles: {', '.join(config.profiles)}")
    return 0


def cmd_ca_list(args: argparse.Namespace, config: Config) -> int:
    from ca import inventory
    from ca.issuers import pending_csrs

    core = _core(config)
    described = [inventory.describe_issuer(i, core.urls) for i in core.issuers.values()]
    for item in described:
        item.pop("chain")
    print(
        json.dumps(
            {"issuers": described, "awaiting_certificate": sorted(pending_csrs(core.database))},
            indent=2,
        )
    )
    return 0


def cmd_ca_csr(args: argparse.Namespace, config: Config) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from ca.issuers import pending_csrs

    core = _core(config)
    csrs = pending_csrs(core.database)
    if args.name not in csrs:
        raise CoreErrorUsage(f'issuer "{args.name}" is not waiting for a certificate')
    pem = x509.load_der_x509_csr(csrs[args.name]).public_bytes(Encoding.PEM)
    if args.out:
        Path(args.out).write_bytes(pem)
    else:
        sys.stdout.write(pem.decode())
    return 0


def cmd_ca_import(args: argparse.Namespace, config: Config) -> int:
    from ca.bootstrap import cli_actor
    from ca.issuers import import_certificate

    core = _core(config)
    actor = cli_actor()

    def audit(session: Any, action: str, obj: str, details: dict[str, Any]) -> None:
        core.audit(session, actor=actor, channel="cli", action=action, object=obj, details=details)

    import_certificate(
        core.database,
        core.keystore,
        args.name,
        Path(args.cert).read_bytes(),
        Path(args.chain).read_bytes() if args.chain else b"",
        audit=audit,
    )
    print(f"certificate imported for issuer {args.name}")
    return 0


def _sequence_number(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**62:
        raise argparse.ArgumentTypeError("must be from 0 to 2^62")
    return value


class CoreErrorUsage(Exception):
    """A usage mistake found after parsing (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privca", description="privca private certificate authority"
    )
    parser.add_argument(
        "--config", "-c", help="privca.toml (default: $PRIVCA_CONFIG or built-in defaults)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, handler: Callable[..., int], help_text: str, sub: Any = commands
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    add("init", cmd_init, "create the token, the CA keys and certificates (idempotent)")
    add("serve", cmd_serve, "initialise if needed, then serve HTTPS with gunicorn")
    worker = add("worker", cmd_worker, "run background jobs in this process")
    worker.add_argument("--once", action="store_true", help="run the due jobs and exit")

    issue = add("issue", cmd_issue, "issue a certificate for a CSR; prints the chain (PEM)")
    issue.add_argument("--csr", required=True, help="PKCS#10 request, PEM or DER")
    issue.add_argument("--profile", required=True)
    issue.add_argument("--validity-days", type=int)
    issue.add_argument("--owner", help="recorded on the certificate (default: you)")
    issue.add_argument("--out", help="write the chain here instead of stdout")
    issue.add_argument("--leaf-only", action="store_true", help="only the end-entity certificate")

    revoke = add("revoke", cmd_revoke, "revoke a certificate by serial number (hex)")
    revoke.add_argument("serial")
    revoke.add_argument(
        "--reason", default="unspecified", help="RFC 5280 reason, e.g. keyCompromise"
    )
    revoke.add_argument("--issuer", help="needed only if the serial exists under two issuers")
    revoke.add_argument(
        "--invalidity-date", help="ISO 8601 with zone: when the key was compromised"
    )

    certs = add("certs", lambda a, c: EXIT_USAGE, "list and show certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    listing = add("list", cmd_certs_list, "list certificates", certs_sub)
    listing.add_argument("--expiring-within", help='e.g. "30d": valid certificates expiring within')
    listing.add_argument("--status", choices=["pending", "issued", "revoked", "failed"])
    listing.add_argument("--issuer")
    listing.add_argument("--owner")
    listing.add_argument("--profile")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--json", action="store_true")
    show = add("show", cmd_certs_show, "show one certificate", certs_sub)
    show.add_argument("serial")
    show.add_argument("--issuer")

    audit = add("audit", lambda a, c: EXIT_USAGE, "verify and export the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = add(
        "verify", cmd_audit_verify, "verify the hash chain and signed checkpoints", audit_sub
    )
    verify.add_argument(
        "--expect-seq",
        type=_sequence_number,
        default=0,
        help="an entry known to exist (e.g. the last one of an earlier export)",
    )
    export = add("export", cmd_audit_export, "write the audit log as JSON lines", audit_sub)
    export.add_argument("--out")
    export.add_argument(
        "--since", type=_sequence_number, default=0, help="entries after this sequence number"
    )
    add("checkpoint", cmd_audit_checkpoint, "sign a checkpoint now", audit_sub)

    token = add("token", lambda a, c: EXIT_USAGE, "admin API bearer tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = add("create", cmd_token_create, "create a token (printed once)", token_sub)
    create.add_argument("--name", required=True)
    create.add_argument("--scope", default="read", help="comma-separated: read,issue,revoke,admin")
    create.add_argument("--out", help="write the token to this file (mode 0600) instead of stdout")
    add("list", cmd_token_list, "list tokens", token_sub)
    token_revoke = add("revoke", cmd_token_revoke, "revoke a token", token_sub)
    token_revoke.add_argument("id", type=_sequence_number)

    db = add("db", lambda a, c: EXIT_USAGE, "database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    add("upgrade", cmd_db_upgrade, "apply migrations", db_sub)

    config = add("config", lambda a, c: EXIT_USAGE, "configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    add("check", cmd_config_check, "validate the configuration and summarise it", config_sub)

    ca = add("ca", lambda a, c: EXIT_USAGE, "issuing CAs (offline root workflow)")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    add("list", cmd_ca_list, "list CAs and those awaiting a certificate", ca_sub)
    csr = add("csr", cmd_ca_csr, "export the CSR of a CA awaiting its certificate", ca_sub)
    csr.add_argument("name")
    csr.add_argument("--out")
    imp = add("import", cmd_ca_import, "import the certificate the offline root signed", ca_sub)
    imp.add_argument("name")
    imp.add_argument("--cert", required=True)
    imp.add_argument("--chain", help="PEM of the CA(s) above it, issuer first")

    # Front ends add their own commands (e.g. `privca acme eab create`): each entry point is
    # called with the subparsers object; its parsers set `handler(args, config) -> int`.
    for entry_point in sorted(entry_points(group=CLI_GROUP), key=lambda ep: ep.name):
        entry_point.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args, config)
    except CoreError as exc:
        print(f"error: {exc.safe_detail}", file=sys.stderr)
        for violation in exc.per_identifier:
            prefix = f"{violation.identifier}: " if violation.identifier else ""
            print(f"  - {prefix}{violation.detail}", file=sys.stderr)
        return EXIT_REFUSED
    except (ConfigError, CoreErrorUsage) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HSMError as exc:
        print(f"token error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except SQLAlchemyError as exc:
        # The class and the driver's first line say what failed; never the URL (it may hold a
        # password).
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        print(f"database error ({type(exc).__name__}): {reason}", file=sys.stderr)
        return EXIT_REFUSED
    except OverflowError:
        print("error: a number given is out of range", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", file=sys.stderr
        )
        return EXIT_REFUSED
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
