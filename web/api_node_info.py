"""Node endpoints Proxmox tools read on every scrape: subscription and replication.

corral has no subscriptions and no storage replication; these answer what
Proxmox answers on a node without a subscription key and without replication
jobs, so monitoring (prometheus-pve-exporter's default collectors) and
scripts work unchanged.
"""

from __future__ import annotations

import os
from typing import Any

from corral.cluster.schema import NODE, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node


def _sockets() -> int:
    """Physical CPU sockets of this host (what Proxmox reports for licensing)."""
    ids = set()
    base = "/sys/devices/system/cpu"
    try:
        names = os.listdir(base)
    except OSError:
        return 1
    for name in names:
        try:
            with open(f"{base}/{name}/topology/physical_package_id") as f:
                ids.add(f.read().strip())
        except OSError:
            continue
    return max(len(ids), 1)


@endpoint(
    "GET",
    "/nodes/{node}/subscription",
    params={"node": NODE},
    description="Read subscription info.",
)
def subscription(ctx: Ctx, node: str) -> dict[str, Any]:
    require_node(ctx, node)
    return {
        "status": "notfound",
        "message": "There is no subscription key",
        "level": "",
        "sockets": _sockets(),
    }


@endpoint(
    "GET",
    "/nodes/{node}/replication",
    params={
        "node": NODE,
        "guest": Param(
            "integer",
            "Only list replication jobs for this guest.",
            optional=True,
            minimum=100,
            maximum=999999999,
        ),
    },
    description="List status of all replication jobs on this node.",
)
def replication(ctx: Ctx, node: str, guest: int | None = None) -> list[dict[str, Any]]:
    require_node(ctx, node)
    return []  # no replication jobs: corral does not replicate storage
