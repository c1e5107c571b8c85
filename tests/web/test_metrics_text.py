"""The fast exposition writer says byte for byte what prometheus_client says."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from corral.web import metrics_pve

STATUS: list[dict[str, Any]] = [
    {"type": "cluster", "id": "cluster", "name": "dc1", "nodes": 2, "quorate": 1, "version": 3},
    {"type": "node", "id": "node/n1", "name": "n1", "nodeid": 1, "online": 1, "level": ""},
    {"type": "node", "id": "node/n2", "name": "n2", "nodeid": 2, "online": 0, "level": ""},
]
ROWS: list[dict[str, Any]] = [
    {"id": "node/n1", "type": "node", "node": "n1", "status": "online", "cpu": 0.125,
     "maxcpu": 64, "mem": 123456789012, "maxmem": 1 << 40, "uptime": 86400, "hastate": "online"},
    {"id": "storage/n1/local", "type": "storage", "storage": "local", "node": "n1",
     "status": "available", "plugintype": "dir", "content": "vztmpl,iso,images", "shared": 0,
     "disk": 5, "maxdisk": 1e15},
    {"id": "lxc/100", "vmid": 100, "type": "lxc", "node": "n1", "name": 'we"b\\1', "tags": "a;b",
     "status": "running", "cpu": 1 / 3, "cpus": 2, "mem": 0, "maxmem": 536870912,
     "netin": 10, "netout": 12345678901234, "diskread": 0, "diskwrite": 7, "uptime": 5,
     "lock": "backup", "hastate": "started", "template": 1},
    {"id": "qemu/200", "vmid": 200, "type": "qemu", "node": "n2", "name": "vm\nx",
     "status": "stopped", "maxcpu": 4, "maxmem": 2147483648, "qmpstatus": "stopped",
     "cpu": True, "uptime": None},
]  # fmt: skip
VERSION = {"version": "8.1.0", "release": "8.1", "repoid": "corral-0.1.0", "product": "corral"}
ONBOOT = [("lxc/100", "n1", "lxc", 1), ("qemu/200", "n2", "qemu", "0")]


def test_same_bytes_as_prometheus_client() -> None:
    extras = {"not_backed_up": ["lxc/100", "qemu/2\"00"],
              "subscription": {"node": "n1", "status": "notfound", "level": ""}}  # fmt: skip
    for cluster_wide in (True, False):
        ours = metrics_pve.exposition(
            STATUS, ROWS, VERSION, ONBOOT, cluster_wide=cluster_wide, **extras
        )
        ref = _registry(STATUS, ROWS, VERSION, ONBOOT, cluster_wide, **extras)
        assert ours == generate_latest(ref)
    names = {f.name for f in text_string_to_metric_families(ours.decode())}
    assert {"pve_up", "pve_guest_info", "pve_ha_state", "pve_network_transmit_bytes"} <= names


def test_empty_cluster() -> None:
    assert metrics_pve.exposition([], [], {}) == generate_latest(_registry([], [], {}))


def _registry(
    status: Any, rows: Any, version: Any, onboot: Any = (), cluster_wide: bool = True, **kw: Any
) -> CollectorRegistry:
    """The reference: families() through prometheus_client's own generate_latest()."""
    fams = list(
        metrics_pve.families(status, rows, version, onboot, cluster_wide=cluster_wide, **kw)
    )

    class Collector:
        def collect(self) -> list[Any]:
            return fams

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())  # type: ignore[arg-type]
    return registry
