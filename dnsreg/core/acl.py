"""Tokens and the one authorisation decision (SPEC §7).

An ACL file is TOML with ``[[tokens]]`` entries: ``name``, ``sha256`` (hex SHA-256 of
the secret; the secret itself is never stored), ``services`` (fnmatch-style globs of
service names) and ``rights``. Every write path (HTTP native routes, Consul routes,
DNS UPDATE) asks :func:`authorize`; nothing else decides who may do what.

Pure apart from :func:`load_acl`, which only reads the file it is given.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from dnsreg.core.errors import ConfigError, Forbidden, Unauthorized


class Right(StrEnum):
    READ = "read"  # reads, when reads are closed (acl_reads = "token")
    WRITE = "write"  # register, heartbeat, deregister, maintenance within its services
    TRANSFER = "transfer"  # DNS zone transfers
    OPERATOR = "operator"  # everything, any service


# What each right also grants: a writer may read what it writes; an operator may do all.
_IMPLIED: dict[Right, frozenset[Right]] = {
    Right.READ: frozenset({Right.READ}),
    Right.WRITE: frozenset({Right.WRITE, Right.READ}),
    Right.TRANSFER: frozenset({Right.TRANSFER}),
    Right.OPERATOR: frozenset(Right),
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Service names are DNS labels (lower case); a glob adds fnmatch's * ? [ ] !.
_GLOB = re.compile(r"[a-z0-9*?\[\]!-]{1,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = ("name", "sha256", "services", "rights")


def digest(secret: str) -> bytes:
    # HTTP servers hand undecodable header bytes over as surrogates: hash the bytes as
    # sent, so such a header is an unknown token (401), not an encoding crash.
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: a token from the ACL file, or the open modes' stand-in."""

    name: str
    rights: frozenset[Right]
    services: tuple[str, ...] = ("*",)

    @property
    def is_operator(self) -> bool:
        return Right.OPERATOR in self.rights

    def granted(self) -> frozenset[Right]:
        out: set[Right] = set()
        for right in self.rights:
            out |= _IMPLIED[right]
        return frozenset(out)

    def covers(self, service: str) -> bool:
        return self.is_operator or any(fnmatchcase(service, g) for g in self.services)


@dataclass(frozen=True, slots=True)
class Token:
    principal: Principal
    sha256: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Acl:
    tokens: tuple[Token, ...] = ()

    def lookup(self, secret: str) -> Principal | None:
        """The token whose hash matches, compared in constant time (no early exit)."""
        presented = digest(secret)
        found: Principal | None = None
        for token in self.tokens:
            if hmac.compare_digest(presented, token.sha256):
                found = token.principal
        return found

    def names(self) -> list[str]:
        return [t.principal.name for t in self.tokens]


def authorize(
    principal: Principal | None, right: Right, service: str | None, *, presented: bool = False
) -> Principal:
    """The one authorisation function: return the principal, or raise.

    ``service`` is None for requests that span services (lists, events, metrics):
    then holding the right for any service is enough. ``presented`` says a secret was
    sent but matched no token, which only changes the wording of the 401.
    """
    if principal is None:
        raise Unauthorized(
            "unknown token: no token in the ACL file has this secret"
            if presented
            else "a token is required: send Authorization: Bearer <secret>",
            detail={"missing": "token"},
        )
    if right not in principal.granted() or (service is not None and not principal.covers(service)):
        scope = f" for service {service!r}" if service is not None else ""
        raise Forbidden(
            f"token {principal.name!r} lacks the {right.value} right{scope}",
            detail={"missing": right.value, "service": service, "token": principal.name},
        )
    return principal


# ------------------------------------------------------------------ the file
def parse_acl(text: str, source: str) -> Acl:
    """Parse an ACL file strictly; every error names ``source`` and the entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"acl file {source}: {exc}") from exc
    unknown = sorted(set(data) - {"tokens"})
    if unknown:
        raise ConfigError(f"acl file {source}: unknown key(s) {', '.join(unknown)}")
    entries = data.get("tokens", [])
    if not isinstance(entries, list):
        raise ConfigError(f"acl file {source}: tokens must be an array of tables [[tokens]]")
    tokens: list[Token] = []
    names: set[str] = set()
    hashes: set[bytes] = set()
    for index, entry in enumerate(entries):
        token = _parse_entry(entry, f"acl file {source}: tokens[{index}]")
        if token.principal.name in names:
            raise ConfigError(
                f"acl file {source}: tokens[{index}]: duplicate name {token.principal.name!r}"
            )
        if token.sha256 in hashes:
            raise ConfigError(
                f"acl file {source}: tokens[{index}] ({token.principal.name!r}): "
                "same sha256 as an earlier token"
            )
        names.add(token.principal.name)
        hashes.add(token.sha256)
        tokens.append(token)
    return Acl(tuple(tokens))


def _parse_entry(entry: Any, where: str) -> Token:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be a table")
    name = entry.get("name")
    if isinstance(name, str):
        where = f"{where} ({name!r})"
    unknown = sorted(set(entry) - set(_ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = [k for k in _ENTRY_KEYS if k not in entry]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    name = check_token_name(name, where=where)
    sha = entry["sha256"]
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha.lower()):
        raise ConfigError(f"{where}: sha256 must be 64 hex digits")
    services = entry["services"]
    if not isinstance(services, list) or not services:
        raise ConfigError(f"{where}: services must be a non-empty list of globs")
    globs = tuple(check_glob(g, where=where) for g in services)
    rights = entry["rights"]
    if not isinstance(rights, list) or not rights:
        raise ConfigError(f"{where}: rights must be a non-empty list")
    return Token(
        Principal(name, frozenset(parse_rights(rights, where=where)), globs),
        bytes.fromhex(sha),
    )


def check_token_name(name: Any, *, where: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: name must be 1-64 letters, digits, '_', '.', '-', got {name!r}"
        )
    return name


def check_glob(glob: Any, *, where: str) -> str:
    if not isinstance(glob, str) or not _GLOB.fullmatch(glob):
        raise ConfigError(
            f"{where}: service glob {glob!r} must be lower-case letters, digits, '-' and * ? [ ] !"
        )
    return glob


def parse_rights(rights: Iterable[Any], *, where: str) -> list[Right]:
    out = []
    for right in rights:
        try:
            out.append(Right(right))
        except ValueError:
            known = ", ".join(r.value for r in Right)
            raise ConfigError(f"{where}: unknown right {right!r} (known: {known})") from None
    return out


def load_acl(path: Path) -> Acl:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"acl file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"acl file {path}: not UTF-8 text ({exc.reason})") from exc
    return parse_acl(text, str(path))


def format_entry(
    name: str, sha256_hex: str, services: Sequence[str], rights: Sequence[Right]
) -> str:
    """One ``[[tokens]]`` table as TOML text (JSON string quoting is valid TOML)."""

    def strings(values: Iterable[str]) -> str:
        return "[" + ", ".join(_quote(v) for v in values) + "]"

    return (
        "[[tokens]]\n"
        f"name = {_quote(name)}\n"
        f"sha256 = {_quote(sha256_hex)}\n"
        f"services = {strings(services)}\n"
        f"rights = {strings(r.value for r in rights)}\n"
    )


def _quote(text: str) -> str:
    # Names and globs are checked to plain ASCII before they get here; escape anyway.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
