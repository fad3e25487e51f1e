"""``dnsreg acl add|list``: server-side token administration (SPEC §7).

Not part of ``dnsreg.client``: it edits the server's ACL file and needs no server. The
secret is printed once and only its SHA-256 is written; a running server picks new
tokens up on SIGHUP.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

from dnsreg.core.acl import (
    Right,
    check_glob,
    check_token_name,
    format_entry,
    load_acl,
    parse_acl,
)
from dnsreg.core.errors import ConfigError

SECRET_BYTES = 32  # 256 bits of randomness from the secrets module


def new_secret() -> str:
    """A fresh secret that never starts with '-': pasted after ``--token`` it must not
    read as a flag (argparse would refuse ``--token -x…``)."""
    while True:
        secret = secrets.token_urlsafe(SECRET_BYTES)
        if not secret.startswith("-"):
            return secret


def add_acl_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    acl = sub.add_parser("acl", help="create and list API tokens (server side)")
    acl_sub = acl.add_subparsers(dest="acl_command", required=True)

    add = acl_sub.add_parser("add", help="make a token: prints its secret once")
    add.add_argument("name", help="the token's name (shown in logs)")
    add.add_argument(
        "--services", action="append", required=True, metavar="GLOB",
        help="service names it covers, fnmatch-style: web, 'web-*' (repeatable)",
    )  # fmt: skip
    kind = add.add_mutually_exclusive_group()
    kind.add_argument(
        "--operator", action="store_true", help="every right on every service (default: write)"
    )
    kind.add_argument("--read", action="store_true", help="read only (for acl_reads = token)")
    add.add_argument("--transfer", action="store_true", help="also allow DNS zone transfers")
    add.add_argument("--file", required=True, type=Path, help="the ACL file (created 0600)")

    ls = acl_sub.add_parser("list", help="names, services and rights (never secrets)")
    ls.add_argument("--file", required=True, type=Path, help="the ACL file")


def run_acl_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        if args.acl_command == "add":
            secret = add_token(
                args.file, args.name, args.services,
                rights=_rights(args.operator, args.read, args.transfer),
            )  # fmt: skip
            print(
                f"token {args.name!r} added to {args.file}; its secret (shown only now):", file=out
            )
            print(secret, file=out)
            print(
                "send it as: Authorization: Bearer <secret>; then `kill -HUP` the server", file=out
            )
            return 0
        for token in load_acl(args.file).tokens:
            p = token.principal
            rights = ",".join(sorted(r.value for r in p.rights))
            print(f"{p.name}\tservices={','.join(p.services)}\trights={rights}", file=out)
        return 0
    except ConfigError as exc:
        print(f"dnsreg: {exc.message}", file=sys.stderr)
        return 2


def _rights(operator: bool, read: bool, transfer: bool) -> list[Right]:
    rights = [Right.OPERATOR] if operator else [Right.READ] if read else [Right.WRITE]
    if transfer and not operator:
        rights.append(Right.TRANSFER)
    return rights


def add_token(path: Path, name: str, services: list[str], *, rights: list[Right]) -> str:
    """Append a new token to ``path``; returns the secret. Refuses a duplicate name."""
    where = f"acl file {path}: new token"
    check_token_name(name, where=where)
    globs = [check_glob(g.lower(), where=where) for g in services]
    # 0600 when created: the file holds only hashes, but who may add tokens is the owner.
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"acl file {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        # Two `acl add` at once must not both pass the duplicate check.
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            existing = f.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"acl file {path}: not UTF-8 text ({exc.reason})") from exc
        acl = parse_acl(existing, str(path))  # a broken file is not appended to
        if name in acl.names():
            raise ConfigError(f"acl file {path}: a token named {name!r} exists already")
        secret = new_secret()
        entry = format_entry(name, hashlib.sha256(secret.encode()).hexdigest(), globs, rights)
        # A blank line between tables, whatever the file ended with.
        text = ("" if not existing else "\n" if existing.endswith("\n") else "\n\n") + entry
        parse_acl(existing + text, str(path))  # what we write must load
        f.write(text)
    return secret
