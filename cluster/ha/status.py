"""HA state as the API, the CLI and the metrics read it (Proxmox's shapes).

`guest_states_of` is what prometheus-pve-exporter's `pve_ha_state` needs (the
`hastate` of /cluster/resources rows); `current` is /cluster/ha/status/current;
`manager_status` is /cluster/ha/status/manager_status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from corral.cluster.ha.env import MANAGER_LOCK, HAState, StoreLike, resource_from
from corral.cluster.ha.model import sid_of

# Every state a service can show, as pve-ha-manager names them (for enum metrics).
SERVICE_STATES = (
    "stopped",
    "request_stop",
    "request_start",
    "started",
    "fence",
    "recovery",
    "migrate",
    "relocate",
    "freeze",
    "error",
    "queued",
    "disabled",
    "ignored",
)


def _state(requested: str, crm: dict[str, Any] | None) -> str:
    if requested in ("ignored", "disabled") and (crm is None or crm["state"] == "stopped"):
        return requested
    return "queued" if crm is None else str(crm["state"])


def guest_states_of(resources: Iterable[dict[str, Any]], manager: dict[str, Any]) -> dict[int, str]:
    """vmid -> HA state of the HA-managed guests, from the raw values of the HA
    resource keys and of the manager status (the node's in-memory view holds
    both: /cluster/resources reads no etcd for them)."""
    ss = manager.get("service_status", {})
    out = {}
    for raw in resources:
        res = resource_from(raw)
        out[int(res.sid.split(":")[1])] = _state(res.state, ss.get(res.sid))
    return out


def guest_ha(store: StoreLike, type: str, vmid: int) -> dict[str, Any]:
    """The `ha` member of a guest's status/current."""
    sid = sid_of("ct" if type == "lxc" else "vm", vmid)
    ha = HAState(store)
    res = ha.resource(sid)
    if res is None:
        return {"managed": 0}
    crm = ha.manager_status().get("service_status", {}).get(sid)
    return {"managed": 1, "state": _state(res.state, crm), "request_state": res.state}


def current(store: StoreLike) -> list[dict[str, Any]]:
    ha = HAState(store)
    ms = ha.manager_status()
    lock = store.get_value(MANAGER_LOCK) or {}
    master = lock.get("node") or ms.get("master_node", "")
    quorate = getattr(store, "quorate", True) is not False
    out: list[dict[str, Any]] = [
        {
            "id": "quorum",
            "type": "quorum",
            "node": master,
            "quorate": int(quorate),
            "status": "OK" if quorate else "No quorum on node",
        }
    ]
    if master:
        active = "active" if lock else "lost lock"
        out.append(
            {"id": "master", "type": "master", "node": master, "status": f"{master} ({active})"}
        )
    holders = ha.agent_holders()
    lrms = ha.lrm_statuses()
    for node in sorted(ms.get("node_status", {})):
        lrm = lrms.get(node, {})
        state = lrm.get("state", "unknown") if holders.get(node) == node else "offline"
        out.append(
            {
                "id": f"lrm:{node}",
                "type": "lrm",
                "node": node,
                "status": f"{node} ({state}, {ms['node_status'][node]})",
            }
        )
    ss = ms.get("service_status", {})
    for sid, res in sorted(ha.resources().items()):
        crm = ss.get(sid)
        state = _state(res.state, crm)
        node = (crm or {}).get("node", "")
        out.append(
            {
                "id": f"service:{sid}",
                "type": "service",
                "sid": sid,
                "node": node,
                "state": state,
                "crm_state": state,
                "request_state": res.state,
                "max_restart": res.max_restart,
                "max_relocate": res.max_relocate,
                "failback": int(res.failback),
                "status": f"{sid} ({node or 'unknown'}, {state})",
            }
        )
    return out


def manager_status(store: StoreLike) -> dict[str, Any]:
    ha = HAState(store)
    ms = ha.manager_status()
    nodes = sorted(set(ms.get("node_status", {})) | set(ha.agent_holders()))
    lrms = ha.lrm_statuses()
    lock = store.get_value(MANAGER_LOCK) or {}
    return {
        "manager_status": ms,
        "lrm_status": {n: lrms.get(n, {}) for n in nodes},
        "agent_locks": ha.agent_holders(),
        "quorum": {
            "node": lock.get("node", ""),
            "quorate": int(getattr(store, "quorate", True) is not False),
        },
    }
