"""`privca acme …`: External Account Binding keys and ARI renewal overrides.

    privca acme eab create --owner TEAM [--directory NAME] [--json]
    privca acme eab list [--json]
    privca acme eab revoke KEY_ID
    privca acme renew-early (--serial HEX [--issuer NAME] | --issued-before ISO) [--window-hours N]

The MAC key is printed once, at creation (as the base64url string clients take as --eab-hmac-key).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from ca.config import Config
from ca.errors import BadRequest


def _acme_core(config: Config) -> Any:
    from ca.bootstrap import cli_actor
    from ca.cli import _core

    core = _core(config)
    return core, cli_actor()


def cmd_eab_create(args: argparse.Namespace, config: Config) -> int:
    from acme_server import eab
    from acme_server.settings import parse_settings

    settings = parse_settings(config.frontends.get("acme"), config.profiles)
    if args.directory is not None and args.directory not in settings.directories:
        raise BadRequest(f'no ACME directory named "{args.directory}"')
    core, actor = _acme_core(config)
    try:
        created = eab.create_key(
            core, owner=args.owner, directory=args.directory, actor=actor, channel="cli"
        )
    finally:
        core.close()
    if args.json:
        print(
            json.dumps(
                {
                    "key_id": created.key_id,
                    "hmac_key": created.hmac_key,
                    "owner": created.owner,
                    "directory": created.directory,
                }
            )
        )
    else:
        print(f"key id:   {created.key_id}")
        print(f"hmac key: {created.hmac_key}")
        print(f"owner:    {created.owner}")
        print("The HMAC key is shown only now. Give both to the ACME client, e.g.")
        print(f"  certbot register --eab-kid {created.key_id} --eab-hmac-key <hmac key> …")
    return 0


def cmd_eab_list(args: argparse.Namespace, config: Config) -> int:
    from acme_server import eab

    core, _ = _acme_core(config)
    try:
        keys = eab.list_keys(core)
    finally:
        core.close()
    if args.json:
        print(json.dumps(keys))
        return 0
    for key in keys:
        print(
            f"{key['key_id']:<24} {key['status']:<8} owner={key['owner']}"
            f" directory={key['directory'] or '*'} created={key['created_at']}"
        )
    return 0


def cmd_eab_revoke(args: argparse.Namespace, config: Config) -> int:
    from acme_server import eab

    core, actor = _acme_core(config)
    try:
        result = eab.revoke_key(core, args.key_id, actor=actor, channel="cli")
    finally:
        core.close()
    print(f"revoked {result['key_id']} (owner {result['owner']})")
    return 0


def cmd_renew_early(args: argparse.Namespace, config: Config) -> int:
    from acme_server import ari

    issued_before = None
    if args.issued_before:
        try:
            issued_before = datetime.fromisoformat(args.issued_before)
        except ValueError:
            raise BadRequest("--issued-before must be an ISO 8601 date-time") from None
        if issued_before.tzinfo is None:
            raise BadRequest("--issued-before must carry a time zone (e.g. Z or +00:00)")
    core, actor = _acme_core(config)
    try:
        result = ari.pull_forward(
            core,
            serial=args.serial,
            issuer_name=args.issuer,
            issued_before=issued_before,
            window_hours=args.window_hours,
            explanation_url=args.explanation_url,
            actor=actor,
            channel="cli",
        )
    finally:
        core.close()
    print(f"renewal window pulled forward to {result['window_start']} .. {result['window_end']}")
    return 0


def register(commands: Any) -> None:
    """Add `privca acme …` to the privca command line."""
    acme = commands.add_parser("acme", help="ACME server: EAB keys, renewal information")
    acme.set_defaults(handler=lambda args, config: 2)
    acme_sub = acme.add_subparsers(dest="acme_command", required=True)

    eab = acme_sub.add_parser("eab", help="External Account Binding keys")
    eab.set_defaults(handler=lambda args, config: 2)
    eab_sub = eab.add_subparsers(dest="eab_command", required=True)
    create = eab_sub.add_parser("create", help="create a key (the HMAC key is printed once)")
    create.add_argument("--owner", required=True, help="recorded on every certificate it gets")
    create.add_argument("--directory", help="only for this ACME directory (default: any)")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=cmd_eab_create)
    listing = eab_sub.add_parser("list", help="list keys (never the HMAC key)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_eab_list)
    revoke = eab_sub.add_parser("revoke", help="refuse a key for new account bindings")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=cmd_eab_revoke)

    early = acme_sub.add_parser(
        "renew-early", help="pull ARI renewal windows forward (e.g. before a mass revocation)"
    )
    target = early.add_mutually_exclusive_group(required=True)
    target.add_argument("--serial", help="one certificate (hex serial)")
    target.add_argument("--issued-before", help="every certificate issued before (ISO 8601)")
    early.add_argument("--issuer", help="only certificates of this issuing CA")
    early.add_argument("--window-hours", type=int, default=24)
    early.add_argument("--explanation-url")
    early.set_defaults(handler=cmd_renew_early)
