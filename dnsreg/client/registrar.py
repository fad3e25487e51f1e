"""``dnsreg registrar --dir services.d/``: registers what TOML files describe (third party).

The loop polls the folder's file signatures (mtime, size) every second or so,
which needs no extra dependency and notices edits made by any tool. Each file
is parsed on its own (:mod:`dnsreg.client.service_files`): a broken file is reported by
name and keeps its last good content, the others carry on. Every instance gets a
:class:`~dnsreg.client.lease.Lease`; when the registrar dies, nobody heartbeats and
the leases run out, so its instances leave DNS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from dnsreg.client.client import Client
from dnsreg.client.lease import Lease
from dnsreg.client.registration import InstanceSpec
from dnsreg.client.service_files import diff, parse_service_file, plan
from dnsreg.core.errors import DnsregError

log = logging.getLogger("dnsreg.registrar")

Signature = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass
class _File:
    signature: Signature
    specs: list[InstanceSpec]  # the last good content (empty if it never parsed)


class Registrar:
    def __init__(
        self,
        client: Client,
        directory: Path,
        *,
        interval: float = 1.0,
        deregister_on_exit: bool = False,
        hostname: str | None = None,
    ) -> None:
        self.client = client
        self.directory = directory
        self.interval = interval
        self.deregister_on_exit = deregister_on_exit
        self.hostname = hostname or socket.gethostname()
        self.files: dict[str, _File] = {}
        self.errors: dict[str, str] = {}  # file -> what is wrong with it (for status and tests)
        self.leases: dict[tuple[str, str], Lease] = {}
        self.scans = 0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("registrar: watching %s (every %gs)", self.directory, self.interval)
        try:
            while not stop.is_set():
                await self.scan()
                # A timer, not a wait for an event: the folder has no change feed here.
                try:
                    async with asyncio.timeout(self.interval):
                        await stop.wait()
                except TimeoutError:
                    pass
        finally:
            await self.close()

    async def close(self) -> None:
        leases, self.leases = self.leases, {}
        await asyncio.gather(
            *(lease.close(deregister=self.deregister_on_exit) for lease in leases.values())
        )
        if leases and not self.deregister_on_exit:
            log.info("registrar: stopped; %d lease(s) will run out", len(leases))

    # -------------------------------------------------------------- scanning
    def _listing(self) -> dict[str, Signature]:
        out: dict[str, Signature] = {}
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            self._report(str(self.directory), f"{self.directory}: {exc.strerror or exc}")
            return {name: f.signature for name, f in self.files.items()}
        self.errors.pop(str(self.directory), None)
        for entry in entries:
            if not entry.name.endswith(".toml") or entry.name.startswith("."):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # removed between listing and stat
            if entry.is_file():
                out[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return out

    async def scan(self) -> None:
        """Read what changed, then make the server hold what the files say."""
        self.scans += 1
        listing = self._listing()
        changed = False
        for name in [n for n in self.files if n not in listing]:
            del self.files[name]
            self.errors.pop(name, None)
            log.info("registrar: %s removed", name)
            changed = True
        for name, signature in listing.items():
            known = self.files.get(name)
            if known is not None and known.signature == signature:
                continue
            changed = True
            previous = known.specs if known is not None else []
            try:
                text = (self.directory / name).read_text(encoding="utf-8")
                specs = parse_service_file(name, text, hostname=self.hostname)
            except (OSError, UnicodeDecodeError) as exc:
                self._report(name, f"{name}: cannot read: {exc}")
                specs = previous
            except DnsregError as exc:
                self._report(
                    name, exc.message + ("; keeping its previous content" if previous else "")
                )
                specs = previous
            else:
                if name in self.errors:
                    log.info("registrar: %s is good again", name)
                self.errors.pop(name, None)
                log.info("registrar: %s: %d instance(s)", name, len(specs))
            self.files[name] = _File(signature, specs)
        if changed:
            await self._reconcile()

    def _report(self, name: str, message: str) -> None:
        if self.errors.get(name) != message:
            log.error("registrar: %s", message)
        self.errors[name] = message

    async def _reconcile(self) -> None:
        wanted = plan({name: f.specs for name, f in self.files.items()})
        for name, message in wanted.duplicates.items():
            self._report(name, message)
        current = {key: lease.spec for key, lease in self.leases.items()}
        add, change, remove = diff(current, wanted.desired)
        for key in remove:
            lease = self.leases.pop(key)
            await lease.close(deregister=True)
            log.info("registrar: deregistered %s/%s", *key)
        for spec in change:
            try:
                await self.leases[spec.key].update(spec)
            except DnsregError as exc:
                self._report(wanted.origin[spec.key], f"{wanted.origin[spec.key]}: {exc.message}")
                continue
            log.info("registrar: updated %s/%s", *spec.key)
        for spec in add:
            lease = self.client.registration(spec, require_server=False)
            try:
                await lease.start()
            except DnsregError as exc:  # refused by the server: the file is at fault
                self._report(wanted.origin[spec.key], f"{wanted.origin[spec.key]}: {exc.message}")
                continue
            self.leases[spec.key] = lease
            log.info("registrar: registered %s/%s", *spec.key)
