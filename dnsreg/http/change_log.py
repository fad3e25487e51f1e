"""One INFO line per registry change, on the ``dnsreg.changes`` logger.

Which logger carries what:

* ``dnsreg.changes`` (here): *what changed*, one line per change the store applied,
  whatever caused it: registered, replaced, deregistered, expired, maintenance on/off.
  A change made by an HTTP write names who made it (token name and client address),
  learnt from :class:`Actors`, which the authorisation wrapper fills while the write runs.
* ``dnsreg.health`` (the checker): health transitions, where the check ran, with the
  check's output (a first result that is critical included). They are not repeated here.
* ``dnsreg.audit`` (:mod:`dnsreg.http.auth`): *who was allowed*: each accepted write with
  token and address (heartbeats at DEBUG: they change nothing), refusals at WARNING.
* ``dnsreg.access``: one line per HTTP request, when ``access_log`` is on.

Structured fields (``service``, ``id``, ``change``, ``revision``, ``token``, ``client``)
ride on each record for ``--log-format json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dnsreg.core.model import Instance
from dnsreg.core.registry import Change, ChangeKind

log = logging.getLogger("dnsreg.changes")

Key = tuple[str, str]


class Actors:
    """Who is writing each instance right now (HTTP writes in flight).

    The store applies a change in its writer task, not the request's, so a context
    variable would not reach the change listener; the instance's key does.
    """

    def __init__(self) -> None:
        self._by_key: dict[Key, tuple[str, str]] = {}

    @contextmanager
    def acting(self, key: Key, token: str, client: str) -> Iterator[None]:
        previous = self._by_key.get(key)
        self._by_key[key] = (token, client)
        try:
            yield
        finally:
            if previous is None:
                self._by_key.pop(key, None)
            else:
                self._by_key[key] = previous

    def get(self, key: Key) -> tuple[str, str] | None:
        return self._by_key.get(key)


def _where(instance: Instance) -> str:
    reg = instance.reg
    host = f"[{reg.address}]" if reg.address.version == 6 else str(reg.address)
    return f"{host}:{reg.port}"


def describe(change: Change) -> str | None:
    """The line for ``change`` (without who made it); None for health transitions."""
    name = f"{change.service}/{change.id}"
    before, after = change.before, change.after
    kind = change.kind
    if kind is ChangeKind.REGISTERED and after is not None:
        return f"registered {name} at {_where(after)} (lease {after.reg.ttl:g}s)"
    if kind is ChangeKind.REPLACED and after is not None:
        was = f", was {_where(before)}" if before is not None else ""
        return f"replaced {name} at {_where(after)} (lease {after.reg.ttl:g}s{was})"
    if kind is ChangeKind.DEREGISTERED:
        return f"deregistered {name}"
    if kind is ChangeKind.EXPIRED:
        ttl = f" of {before.reg.ttl:g}s" if before is not None else ""
        return f"expired {name}: lease{ttl} lapsed without a heartbeat"
    if kind is ChangeKind.MAINTENANCE and after is not None:
        if after.maintenance is None:
            return f"maintenance off {name}: back in DNS if healthy"
        return f"maintenance on {name}: withdrawn from DNS ({after.maintenance})"
    return None  # HEALTH: logged by the checker, with the check's output


class ChangeLog:
    """The store's change listener that writes the lines."""

    def __init__(self, actors: Actors) -> None:
        self.actors = actors

    def on_change(self, change: Change) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        text = describe(change)
        if text is None:
            return
        fields: dict[str, Any] = {
            "service": change.service, "id": change.id,
            "change": change.kind.value, "revision": change.revision,
        }  # fmt: skip
        actor = self.actors.get((change.service, change.id))
        if actor is not None:
            fields["token"], fields["client"] = actor
            text += f" by token {actor[0]} from {actor[1]}"
        log.info("%s (revision %d)", text, change.revision, extra=fields)
