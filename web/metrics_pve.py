"""prometheus-pve-exporter's metric families, built from corral's own rows.

The names, help texts and labels are the exporter's (prometheus-pve-exporter
3.x, collector/cluster.py and collector/node.py), so Grafana dashboard 10347
and existing alert rules work unchanged. The input is what the exporter itself
reads through the API: `/cluster/status` entries, `/cluster/resources` rows,
`/version` and the guests' `onboot`; here they come straight from the node's
own view instead of over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

HA_GUEST_STATES = (
    "stopped", "request_stop", "request_start", "request_start_balance", "started",
    "fence", "recovery", "migrate", "relocate", "freeze", "error",
)  # fmt: skip
HA_NODE_STATES = ("online", "maintenance", "unknown", "fence", "gone")
SUBSCRIPTION_STATES = ("new", "notfound", "active", "invalid", "expired", "suspended")
LOCK_STATES = (
    "backup", "clone", "create", "migrate", "rollback", "snapshot", "snapshot-delete",
    "suspended", "suspending",
)  # fmt: skip

_GAUGES = {
    "maxdisk": (
        "pve_disk_size_bytes",
        "Storage size in bytes (for type 'storage'), root image size for VMs "
        "(for types 'qemu' and 'lxc').",
    ),
    "disk": (
        "pve_disk_usage_bytes",
        "Used disk space in bytes (for type 'storage'), used root image space for VMs "
        "(for types 'qemu' and 'lxc').",
    ),
    "maxmem": (
        "pve_memory_size_bytes",
        "Number of available memory in bytes (for types 'node', 'qemu' and 'lxc').",
    ),
    "mem": ("pve_memory_usage_bytes", "Used memory in bytes (for types 'node', 'qemu' and 'lxc')."),
    "netout": (
        "pve_network_transmit_bytes",
        "The amount of traffic in bytes that was sent from the guest over the network since "
        "it was started. (for types 'qemu' and 'lxc') "
        "DEPRECATED: Use pve_network_transmit_bytes_total instead.",
    ),
    "netin": (
        "pve_network_receive_bytes",
        "The amount of traffic in bytes that was sent to the guest over the network since it "
        "was started. (for types 'qemu' and 'lxc') "
        "DEPRECATED: Use pve_network_receive_bytes_total instead.",
    ),
    "diskwrite": (
        "pve_disk_write_bytes",
        "The amount of bytes the guest wrote to its block devices since the guest was started. "
        "This info is not available for all storage types. (for types 'qemu' and 'lxc') "
        "DEPRECATED: Use pve_disk_written_bytes_total instead.",
    ),
    "diskread": (
        "pve_disk_read_bytes",
        "The amount of bytes the guest read from its block devices since the guest was "
        "started. This info is not available for all storage types. "
        "(for types 'qemu' and 'lxc') DEPRECATED: Use pve_disk_read_bytes_total instead.",
    ),
    "cpu": ("pve_cpu_usage_ratio", "CPU utilization (for types 'node', 'qemu' and 'lxc')."),
    "maxcpu": (
        "pve_cpu_usage_limit",
        "Number of available CPUs (for types 'node', 'qemu' and 'lxc').",
    ),
    "uptime": (
        "pve_uptime_seconds",
        "Uptime of node or virtual guest in seconds (for types 'node', 'qemu' and 'lxc').",
    ),
    "shared": ("pve_storage_shared", "Whether or not the storage is shared among cluster nodes"),
}
_COUNTERS = {
    "netout": (
        "pve_network_transmit_bytes",
        "The amount of traffic in bytes that was sent from the guest over the network since "
        "it was started. (for types 'qemu' and 'lxc')",
    ),
    "netin": (
        "pve_network_receive_bytes",
        "The amount of traffic in bytes that was sent to the guest over the network since it "
        "was started. (for types 'qemu' and 'lxc')",
    ),
    "diskwrite": (
        "pve_disk_written_bytes",
        "The amount of bytes the guest wrote to its block devices since the guest was started. "
        "This info is not available for all storage types. (for types 'qemu' and 'lxc')",
    ),
    "diskread": (
        "pve_disk_read_bytes",
        "The amount of bytes the guest read from its block devices since the guest was "
        "started. This info is not available for all storage types. "
        "(for types 'qemu' and 'lxc')",
    ),
}
GUEST_LABELS = ("id", "node", "name", "type", "template", "tags")
STORAGE_LABELS = ("id", "node", "storage", "plugintype")


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def families(
    status: list[dict[str, Any]],
    rows: Iterable[dict[str, Any]],
    version: dict[str, Any],
    onboot: Iterable[tuple[str, str, str, Any]] = (),
    *,
    cluster_wide: bool = True,
    not_backed_up: list[str] | None = None,
    subscription: dict[str, Any] | None = None,
) -> Iterator[Metric]:
    """The exporter's families. `status` is /cluster/status, `rows` /cluster/resources,
    `onboot` (id, node, type, value) for the guests whose config the scrape covers.
    With `cluster_wide` False the cluster-level entries (pve_cluster_info, the cluster's
    pve_up) are left out: the scrape speaks for one node. `not_backed_up` lists the ids
    ("lxc/100") no backup job covers; `subscription` is the answering node's
    /nodes/{node}/subscription plus its "node"."""
    up = GaugeMetricFamily("pve_up", "Node/VM/CT-Status is online/running", labels=["id"])
    nodes = [e for e in status if e.get("type") == "node"]
    clusters = [e for e in status if e.get("type") == "cluster"] if cluster_wide else []
    for entry in nodes:
        up.add_metric([entry["id"]], entry.get("online", 0))
    for entry in clusters:
        up.add_metric([f"cluster/{entry['name']}"], entry.get("quorate", 0))

    gauges = {k: GaugeMetricFamily(n, h, labels=["id"]) for k, (n, h) in _GAUGES.items()}
    counters = {k: CounterMetricFamily(n, h, labels=["id"]) for k, (n, h) in _COUNTERS.items()}
    ha = GaugeMetricFamily(
        "pve_ha_state", "HA service status (for HA managed VMs).", labels=["id", "state"]
    )
    lock = GaugeMetricFamily(
        "pve_lock_state",
        "The guest's current config lock (for types 'qemu' and 'lxc')",
        labels=["id", "state"],
    )
    guest_info = GaugeMetricFamily("pve_guest_info", "VM/CT info", labels=list(GUEST_LABELS))
    storage_info = GaugeMetricFamily(
        "pve_storage_info", "Storage info", labels=[*STORAGE_LABELS, "content"]
    )
    for row in rows:
        rtype = row.get("type")
        rid = str(row.get("id", ""))
        if rtype in ("qemu", "lxc"):
            up.add_metric([rid], row.get("status") == "running")
            guest_info.add_metric([str(row.get(k, "")) for k in GUEST_LABELS], 1)
            hastate = row.get("hastate")
            for state in HA_GUEST_STATES:
                ha.add_metric([rid, state], hastate == state)
            for state in LOCK_STATES:
                lock.add_metric([rid, state], row.get("lock") == state)
            if "maxcpu" not in row and "cpus" in row:
                # corral's rows name a guest's CPU count `cpus`; the exporter reads maxcpu.
                row = {**row, "maxcpu": row["cpus"]}
        elif rtype == "storage":
            up.add_metric([rid], row.get("status") == "available")
            content = ",".join(sorted(str(row.get("content", "")).split(",")))
            storage_info.add_metric([*(str(row.get(k, "")) for k in STORAGE_LABELS), content], 1)
        elif rtype == "node":
            hastate = row.get("hastate")
            for state in HA_NODE_STATES:
                ha.add_metric([rid, state], hastate == state)
        for key, value in row.items():
            number = _num(value)
            if number is None:
                continue
            if key in gauges:
                gauges[key].add_metric([rid], number)
            if key in counters:
                counters[key].add_metric([rid], number)

    yield up
    yield from gauges.values()
    yield from counters.values()
    yield ha
    yield lock
    yield guest_info
    yield storage_info

    if nodes:
        info = GaugeMetricFamily(
            "pve_node_info", "Node info", labels=["id", "level", "name", "nodeid"]
        )
        for entry in nodes:
            info.add_metric([str(entry.get(k, "")) for k in ("id", "level", "name", "nodeid")], 1)
        yield info
    if clusters:
        labels = ["nodes", "quorate", "version", "id"]
        cinfo = GaugeMetricFamily("pve_cluster_info", "Cluster info", labels=labels)
        for entry in clusters:
            cinfo.add_metric(
                [
                    str(entry.get("nodes", "")),
                    str(entry.get("quorate", "")),
                    str(entry.get("version", "")),
                    f"cluster/{entry['name']}",
                ],
                1,
            )
        yield cinfo
    vlabels = [k for k in ("release", "repoid", "version") if k in version]
    vinfo = GaugeMetricFamily("pve_version_info", "Proxmox VE version info", labels=vlabels)
    vinfo.add_metric([str(version[k]) for k in vlabels], 1)
    yield vinfo

    if not_backed_up is not None and clusters:
        total = GaugeMetricFamily(
            "pve_not_backed_up_total",
            "Total number of guests not covered by any backup job.",
            labels=["id"],
        )
        total.add_metric([f"cluster/{clusters[0]['name']}"], len(not_backed_up))
        yield total
        info_nb = GaugeMetricFamily(
            "pve_not_backed_up_info",
            "Present if guest is not covered by any backup job.",
            labels=["id"],
        )
        for gid in not_backed_up:
            info_nb.add_metric([gid], 1)
        yield info_nb
    if subscription is not None:
        sid = f"node/{subscription['node']}"
        sub_info = GaugeMetricFamily(
            "pve_subscription_info",
            "Proxmox VE subscription info (1 if present)",
            labels=["id", "level"],
        )
        sub_info.add_metric([sid, str(subscription.get("level", "unknown"))], 1)
        yield sub_info
        sub_status = GaugeMetricFamily(
            "pve_subscription_status",
            "Proxmox VE subscription status (1 if matches status)",
            labels=["id", "status"],
        )
        for state in SUBSCRIPTION_STATES:
            sub_status.add_metric([sid, state], 1 if subscription.get("status") == state else 0)
        yield sub_status
        # No due date without a subscription: the family without samples, as the exporter.
        yield GaugeMetricFamily(
            "pve_subscription_next_due_timestamp_seconds",
            "Subscription next due date as Unix timestamp",
            labels=["id"],
        )

    boot = GaugeMetricFamily(
        "pve_onboot_status", "Proxmox vm config onboot value", labels=["id", "node", "type"]
    )
    for gid, node, gtype, value in onboot:
        number = _num(value) if not isinstance(value, str) else _num(int(value or 0))
        boot.add_metric([gid, node, gtype], number or 0.0)
    yield boot


# -- the same text, written directly ----------------------------------------------------
# At 10,000 guests the families above hold ~370,000 samples: building them and
# formatting them through prometheus_client took ~5 s a scrape. exposition()
# writes the very same bytes (tests/web/test_metrics_text.py compares it with
# generate_latest() over families()) in one pass over the rows, with
# prometheus_client's own number formatting.


def _esc(value: Any) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _head(name: str, help_text: str, mtype: str) -> str:
    doc = help_text.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n"


def _labels(pairs: Iterable[tuple[str, Any]]) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in sorted(pairs)) + "}"


_ZERO, _ONE = floatToGoString(0.0), floatToGoString(1.0)
_HA_IDLE = "".join(f'pve_ha_state{{{{id="{{0}}",state="{s}"}}}} {_ZERO}\n' for s in HA_GUEST_STATES)
_LOCK_IDLE = "".join(f'pve_lock_state{{{{id="{{0}}",state="{s}"}}}} {_ZERO}\n' for s in LOCK_STATES)


def exposition(
    status: list[dict[str, Any]],
    rows: Iterable[dict[str, Any]],
    version: dict[str, Any],
    onboot: Iterable[tuple[str, str, str, Any]] = (),
    *,
    cluster_wide: bool = True,
    not_backed_up: list[str] | None = None,
    subscription: dict[str, Any] | None = None,
) -> bytes:
    """families() rendered as prometheus_client's generate_latest() renders them."""
    nodes = [e for e in status if e.get("type") == "node"]
    clusters = [e for e in status if e.get("type") == "cluster"] if cluster_wide else []
    up: list[str] = []
    for entry in nodes:
        up.append(f'pve_up{{id="{_esc(entry["id"])}"}} {floatToGoString(entry.get("online", 0))}\n')
    for entry in clusters:
        value = floatToGoString(entry.get("quorate", 0))
        up.append(f'pve_up{{id="cluster/{_esc(entry["name"])}"}} {value}\n')
    gauges: dict[str, list[str]] = {k: [] for k in _GAUGES}
    counters: dict[str, list[str]] = {k: [] for k in _COUNTERS}
    gauge_names = {k: n for k, (n, _) in _GAUGES.items()}
    counter_names = {k: n + "_total" for k, (n, _) in _COUNTERS.items()}
    ha: list[str] = []
    lock: list[str] = []
    formatted: dict[Any, str] = {}
    guest_info: list[str] = []
    storage_info: list[str] = []
    for row in rows:
        rtype = row.get("type")
        rid = _esc(row.get("id", ""))
        ident = f'{{id="{rid}"}} '
        if rtype in ("qemu", "lxc"):
            up.append(f"pve_up{ident}{_ONE if row.get('status') == 'running' else _ZERO}\n")
            info = _labels((k, str(row.get(k, ""))) for k in GUEST_LABELS)
            guest_info.append(f"pve_guest_info{info} {_ONE}\n")
            hastate, held = row.get("hastate"), row.get("lock")
            # Most guests are neither HA-managed nor locked: one format call writes
            # their 11 + 9 all-zero lines.
            if hastate is None:
                ha.append(_HA_IDLE.format(rid))
            else:
                ha.extend(
                    f'pve_ha_state{{id="{rid}",state="{s}"}} {_ONE if hastate == s else _ZERO}\n'
                    for s in HA_GUEST_STATES
                )
            if not held:
                lock.append(_LOCK_IDLE.format(rid))
            else:
                lock.extend(
                    f'pve_lock_state{{id="{rid}",state="{s}"}} {_ONE if held == s else _ZERO}\n'
                    for s in LOCK_STATES
                )
            if "maxcpu" not in row and "cpus" in row:
                row = {**row, "maxcpu": row["cpus"]}
        elif rtype == "storage":
            up.append(f"pve_up{ident}{_ONE if row.get('status') == 'available' else _ZERO}\n")
            content = ",".join(sorted(str(row.get("content", "")).split(",")))
            pairs = [(k, str(row.get(k, ""))) for k in STORAGE_LABELS] + [("content", content)]
            storage_info.append(f"pve_storage_info{_labels(pairs)} {_ONE}\n")
        elif rtype == "node":
            hastate = row.get("hastate")
            ha.extend(
                f'pve_ha_state{{id="{rid}",state="{s}"}} {_ONE if hastate == s else _ZERO}\n'
                for s in HA_NODE_STATES
            )
        for key, value in row.items():
            if key in gauges or key in counters:
                # Few distinct figures (0, sizes, limits) recur across 10,000 guests.
                text = formatted.get(value) if isinstance(value, (int, float)) else None
                if text is None:
                    number = _num(value)
                    if number is None:
                        continue
                    text = formatted[value] = floatToGoString(number)
                if key in gauges:
                    gauges[key].append(f"{gauge_names[key]}{ident}{text}\n")
                if key in counters:
                    counters[key].append(f"{counter_names[key]}{ident}{text}\n")

    out = [_head("pve_up", "Node/VM/CT-Status is online/running", "gauge"), *up]
    for key, (name, doc) in _GAUGES.items():
        out.append(_head(name, doc, "gauge"))
        out.extend(gauges[key])
    for key, (name, doc) in _COUNTERS.items():
        out.append(_head(name + "_total", doc, "counter"))
        out.extend(counters[key])
    out.append(_head("pve_ha_state", "HA service status (for HA managed VMs).", "gauge"))
    out.extend(ha)
    doc = "The guest's current config lock (for types 'qemu' and 'lxc')"
    out.append(_head("pve_lock_state", doc, "gauge"))
    out.extend(lock)
    out.append(_head("pve_guest_info", "VM/CT info", "gauge"))
    out.extend(guest_info)
    out.append(_head("pve_storage_info", "Storage info", "gauge"))
    out.extend(storage_info)
    if nodes:
        out.append(_head("pve_node_info", "Node info", "gauge"))
        for entry in nodes:
            pairs = [(k, str(entry.get(k, ""))) for k in ("id", "level", "name", "nodeid")]
            out.append(f"pve_node_info{_labels(pairs)} {_ONE}\n")
    if clusters:
        out.append(_head("pve_cluster_info", "Cluster info", "gauge"))
        for entry in clusters:
            pairs = [
                ("nodes", str(entry.get("nodes", ""))),
                ("quorate", str(entry.get("quorate", ""))),
                ("version", str(entry.get("version", ""))),
                ("id", f"cluster/{entry['name']}"),
            ]
            out.append(f"pve_cluster_info{_labels(pairs)} {_ONE}\n")
    out.append(_head("pve_version_info", "Proxmox VE version info", "gauge"))
    vpairs = [(k, str(version[k])) for k in ("release", "repoid", "version") if k in version]
    out.append(f"pve_version_info{_labels(vpairs) if vpairs else ''} {_ONE}\n")
    if not_backed_up is not None and clusters:
        doc = "Total number of guests not covered by any backup job."
        out.append(_head("pve_not_backed_up_total", doc, "gauge"))
        total = floatToGoString(len(not_backed_up))
        out.append(f'pve_not_backed_up_total{{id="cluster/{_esc(clusters[0]["name"])}"}} {total}\n')
        doc = "Present if guest is not covered by any backup job."
        out.append(_head("pve_not_backed_up_info", doc, "gauge"))
        out.extend(f'pve_not_backed_up_info{{id="{_esc(gid)}"}} {_ONE}\n' for gid in not_backed_up)
    if subscription is not None:
        sid = _esc(f"node/{subscription['node']}")
        level = _esc(subscription.get("level", "unknown"))
        doc = "Proxmox VE subscription info (1 if present)"
        out.append(_head("pve_subscription_info", doc, "gauge"))
        out.append(f'pve_subscription_info{{id="{sid}",level="{level}"}} {_ONE}\n')
        doc = "Proxmox VE subscription status (1 if matches status)"
        out.append(_head("pve_subscription_status", doc, "gauge"))
        for state in SUBSCRIPTION_STATES:
            value = _ONE if subscription.get("status") == state else _ZERO
            out.append(f'pve_subscription_status{{id="{sid}",status="{state}"}} {value}\n')
        doc = "Subscription next due date as Unix timestamp"
        out.append(_head("pve_subscription_next_due_timestamp_seconds", doc, "gauge"))
    out.append(_head("pve_onboot_status", "Proxmox vm config onboot value", "gauge"))
    for gid, node, gtype, value in onboot:
        number = _num(value) if not isinstance(value, str) else _num(int(value or 0))
        pairs = [("id", gid), ("node", node), ("type", gtype)]
        out.append(f"pve_onboot_status{_labels(pairs)} {floatToGoString(number or 0.0)}\n")
    return "".join(out).encode()
