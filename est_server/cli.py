"""`privca est …`: Basic credentials for devices and the manual-approval queue.

Passwords are never arguments (they would sit in shell history and `ps`): a new credential gets
a generated password printed once on stdout, or reads one from stdin with --password-stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ca.config import Config


def _core(config: Config) -> Any:
    from ca.cli import _core as core_for

    return core_for(config)


def cmd_user_create(args: argparse.Namespace, config: Config) -> int:
    from ca.bootstrap import cli_actor
    from est_server.config import parse_settings
    from est_server.users import create_user

    settings = parse_settings(config)
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    core = _core(config)
    try:
        user, password = create_user(
            core,
            settings,
            args.username,
            label=args.label,
            password=password,
            actor=cli_actor(),
            channel="cli",
        )
    finally:
        core.close()
    scope = f"label {user.label}" if user.label else "every label that takes Basic"
    if not args.password_stdin:
        print(password)
        print(
            f"EST user {user.username} created for {scope}; the password above is shown once "
            "and stored only as a hash",
            file=sys.stderr,
        )
    else:
        print(f"EST user {user.username} created for {scope}", file=sys.stderr)
    return 0


def cmd_user_list(args: argparse.Namespace, config: Config) -> int:
    from est_server.users import list_users

    core = _core(config)
    try:
        print(json.dumps([u.describe() for u in list_users(core)], indent=2))
    finally:
        core.close()
    return 0


def cmd_user_delete(args: argparse.Namespace, config: Config) -> int:
    from ca.bootstrap import cli_actor
    from est_server.users import delete_user

    core = _core(config)
    try:
        user = delete_user(core, args.username, actor=cli_actor(), channel="cli")
    finally:
        core.close()
    print(f"EST user {user.username} deleted")
    return 0


def cmd_requests(args: argparse.Namespace, config: Config) -> int:
    from est_server import storage

    core = _core(config)
    try:
        with core.database.read() as session:
            held = storage.list_requests(session, args.status)
    finally:
        core.close()
    if args.json:
        print(json.dumps([r.describe() for r in held], indent=2))
        return 0
    print(f"{'ID':>6} {'STATUS':<9} {'LABEL':<16} {'OPERATION':<14} OWNER / SUBJECT / SANS")
    for item in held:
        print(
            f"{item.id:>6} {item.status:<9} {item.label:<16} {item.operation:<14} "
            f"{item.owner} {item.subject} {','.join(item.sans)}"
        )
    print(f"{len(held)} request(s)", file=sys.stderr)
    return 0


def _decide(args: argparse.Namespace, config: Config, approve: bool) -> int:
    from ca.bootstrap import cli_actor
    from est_server.enrollment import decide

    core = _core(config)
    try:
        decided = decide(
            core,
            args.id,
            approve=approve,
            actor=cli_actor(),
            channel="cli",
            reason=getattr(args, "reason", None),
        )
    finally:
        core.close()
    print(f"EST request #{decided.id} {decided.status} ({decided.owner}, {decided.subject})")
    return 0


def cmd_approve(args: argparse.Namespace, config: Config) -> int:
    return _decide(args, config, True)


def cmd_reject(args: argparse.Namespace, config: Config) -> int:
    return _decide(args, config, False)


def register(commands: Any) -> None:
    """Add `privca est` and its subcommands to the `privca` parser."""
    est = commands.add_parser(
        "est", help="EST credentials and approvals", description="EST credentials and approvals"
    )
    est.set_defaults(handler=lambda args, config: 2)
    sub = est.add_subparsers(dest="est_command", required=True)

    def add(name: str, handler: Any, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(handler=handler)
        return parser

    user = add("user", lambda args, config: 2, "HTTP Basic credentials for devices")
    user_sub = user.add_subparsers(dest="est_user_command", required=True)
    create = add(
        "create", cmd_user_create, "create a credential (the password is printed once)", user_sub
    )
    create.add_argument("username")
    create.add_argument("--label", help="valid on this label only (default: every Basic label)")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin instead of generating one",
    )
    add("list", cmd_user_list, "list credentials (never their passwords)", user_sub)
    delete = add("delete", cmd_user_delete, "delete a credential", user_sub)
    delete.add_argument("username")

    requests = add("requests", cmd_requests, "list enrollment requests held for approval")
    requests.add_argument("--status", choices=["pending", "approved", "rejected", "issued"])
    requests.add_argument("--json", action="store_true")
    approve = add("approve", cmd_approve, "approve a held request (the device's retry gets it)")
    approve.add_argument("id", type=int)
    reject = add("reject", cmd_reject, "reject a held request (the device's retry gets a 403)")
    reject.add_argument("id", type=int)
    reject.add_argument("--reason", help="told to the device in the 403")
