"""`privca ocsp …`: export the pre-signed responses for a static web server or CDN."""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path
from typing import Any

from ca.config import Config


def export(core: Any, directory: Path, *, issuer_name: str | None = None, sign: bool = True) -> int:
    """Write each current pre-signed response to DIR/<RFC 5019 GET path>; returns the count.

    The file name is the standard base64 of the DER OCSPRequest an RFC 5019 client sends for
    the certificate (one CertID, hash parameters NULL), so `/ocsp/<name>` maps onto the file.
    Base64's "/" makes subdirectories, just as a web server maps the decoded URL path.
    """
    from sqlalchemy import select

    from ca.storage.models import CertificateRow
    from ocsp import presign
    from ocsp.messages import encode_request
    from ocsp.responder import Responder
    from ocsp.storage import OCSPResponseRow

    responder = Responder(core)
    if sign:
        presign.presign(responder, recent_only=False, budget=float("inf"))
    issuers = {
        issuer.id: issuer
        for issuer in core.issuers.values()
        if issuer_name is None or issuer.name == issuer_name
    }
    if issuer_name is not None and not issuers:
        raise ValueError(f'no issuer named "{issuer_name}"')
    c, r = CertificateRow, OCSPResponseRow
    count = 0
    directory.mkdir(parents=True, exist_ok=True)
    with core.database.read() as session:
        rows = session.execute(
            select(r.issuer_id, r.serial, r.hash_algorithm, r.der)
            .join(c, c.id == r.certificate_id)
            .where(
                r.issuer_id.in_(list(issuers)),
                r.next_update > core.now(),
                r.cert_status_changed_at >= c.status_changed_at,
            )
            .execution_options(yield_per=1000)
        )
        for issuer_id, serial, hash_name, der in rows:
            cert_id = responder.cert_id(issuers[issuer_id], int(serial, 16), hash_name)
            name = base64.b64encode(encode_request(cert_id)).decode("ascii")
            path = directory.joinpath(*[part for part in name.split("/") if part])
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_bytes(der)
            os.replace(temporary, path)
            count += 1
    return count


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from ca.cli import _core

    core = _core(config)
    try:
        count = export(core, Path(args.directory), issuer_name=args.issuer, sign=not args.no_sign)
    finally:
        core.close()
    print(f"wrote {count} OCSP responses to {args.directory}")
    return 0


def register(commands: Any) -> None:
    """Add `privca ocsp export DIR`."""
    ocsp = commands.add_parser("ocsp", help="OCSP responder", description="OCSP responder")
    ocsp.set_defaults(handler=lambda args, config: 2)
    sub = ocsp.add_subparsers(dest="ocsp_command", required=True)
    export_parser = sub.add_parser(
        "export",
        help="write pre-signed responses as files named for RFC 5019 GET paths",
        description="Write the current pre-signed OCSP responses into DIR, one file per "
        "certificate and CertID hash, named by the base64 GET path (serve DIR as /ocsp/).",
    )
    export_parser.add_argument("directory")
    export_parser.add_argument("--issuer", help="only this issuer's certificates")
    export_parser.add_argument(
        "--no-sign", action="store_true", help="export what is stored without signing missing ones"
    )
    export_parser.set_defaults(handler=cmd_export)
