"""Consul's JSON shapes of dnsreg's instances: nodes, services, health checks. Pure.

The field names follow Consul's API docs (api-docs/agent/service.mdx, catalog.mdx,
health.mdx). The whole server is one synthetic node; every check of an instance is a
Consul health check (``service:<ID>[:<n>]`` unless it was given a CheckID), and
maintenance is Consul's critical ``_service_maintenance:<ID>`` check.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from dnsreg.core.durations import format_duration
from dnsreg.core.model import Check, CheckStatus, Instance
from dnsreg.http.consul_schema import default_check_id

DATACENTER = "dc1"
MAINTENANCE_CHECK = "_service_maintenance:"
DEFAULT_MAINTENANCE_NOTE = (
    "Maintenance mode is enabled for this service, but no reason was provided. "
    "This is a default message."
)
INDEXES = ("CreateIndex", "ModifyIndex")


class ConsulViews:
    """Renders instances as Consul does, for the node ``node`` at ``address``."""

    def __init__(self, node: str, address: str) -> None:
        self.node = node
        self.address = address
        self.node_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}.dnsreg"))

    def node_json(self) -> dict[str, Any]:
        return {
            "ID": self.node_id,
            "Node": self.node,
            "Address": self.address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": {
                f"{side}{suffix}": self.address
                for side in ("lan", "wan")
                for suffix in ("", f"_ipv{ipaddress.ip_address(self.address).version}")
            },
            "Meta": {},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    def service(self, instance: Instance) -> dict[str, Any]:
        reg = instance.reg
        return {
            "ID": reg.id,
            "Service": reg.service,
            "Tags": list(reg.tags),
            "Address": str(reg.address),
            "TaggedAddresses": {
                f"{side}_ipv{reg.address.version}": {"Address": str(reg.address), "Port": reg.port}
                for side in ("lan", "wan")
            },
            "Meta": dict(reg.meta),
            "Port": reg.port,
            "Weights": {"Passing": reg.weight, "Warning": reg.weight},
            "EnableTagOverride": False,
            # dnsreg keeps one revision per instance: its last change.
            "CreateIndex": instance.revision,
            "ModifyIndex": instance.revision,
        }

    def agent_service(self, instance: Instance) -> dict[str, Any]:
        out = self.service(instance)
        del out["CreateIndex"], out["ModifyIndex"]
        out["Datacenter"] = DATACENTER
        return out

    def checks(self, instance: Instance) -> list[dict[str, Any]]:
        reg = instance.reg
        out = [
            self._check_view(instance, check_id(instance, n, check), check, status)
            for n, (check, status) in enumerate(zip(reg.checks, instance.checks, strict=False))
        ]
        if instance.maintenance is not None:
            out.insert(
                0,
                self._check_json(
                    instance,
                    check_id=MAINTENANCE_CHECK + reg.id,
                    name="Service Maintenance Mode",
                    status="critical",
                    notes=instance.maintenance,
                    output="",
                    kind="maintenance",
                ),
            )
        return out

    def _check_view(
        self, instance: Instance, check_id: str, check: Check, status: CheckStatus
    ) -> dict[str, Any]:
        out = self._check_json(
            instance,
            check_id=check_id,
            name=check.name or f"Service '{instance.reg.service}' check",
            status=status.state.value,
            notes="",
            output=status.output,
            kind=check.kind,
        )
        if check.kind != "ttl":
            out["Interval"] = format_duration(check.interval)
            out["Timeout"] = format_duration(check.timeout)
        return out

    def _check_json(
        self,
        instance: Instance,
        *,
        check_id: str,
        name: str,
        status: str,
        notes: str,
        output: str,
        kind: str,
    ) -> dict[str, Any]:
        reg = instance.reg
        return {
            "Node": self.node,
            "CheckID": check_id,
            "Name": name,
            "Status": status,
            "Notes": notes,
            "Output": output,
            "ServiceID": reg.id,
            "ServiceName": reg.service,
            "ServiceTags": list(reg.tags),
            "Type": kind,
            "Definition": {},
            "CreateIndex": instance.revision,
            "ModifyIndex": instance.revision,
        }


def check_id(instance: Instance, index: int, check: Check) -> str:
    return check.id or default_check_id(instance.reg.id, index, len(instance.reg.checks))
