"""The etcd key layout, in one place (all under store.PREFIX, i.e. /corral/v1/)."""

from __future__ import annotations

CLUSTER = "cluster/config"  # {"name", "version", ...}
CLUSTER_CA = "cluster/ca"  # {"cert", "key"}: the cluster CA, as Proxmox keeps it in /etc/pve/priv
NODE_INFO = "nodeinfo/"  # nodeinfo/{node}: address, fingerprint, nodeid (persistent)
NODE_ALIVE = "nodes/"  # nodes/{node}: present while the node's lease lives
NODE_STATUS = "nodestatus/"  # nodestatus/{node}: live figures, under the node's lease
GUESTS = "guests/"  # guests/{vmid}: the guest record (type, node, config...)
# gueststatus/{node}/{vmid}: a guest's live status, under its node's lease. One key a
# guest, not one document a node: a task's end writes ~300 bytes, not the whole node's.
GUEST_STATUS = "gueststatus/"
VMID_RESERVED = "vmidres/"  # vmidres/{vmid}: a reservation under a lease
STORAGE = "storage/"  # storage/{id}: storage configuration
STORAGE_STATUS = "storagestatus/"  # storagestatus/{node}: {storage: figures}, under the lease
VOLUME_ATTRS = "volattrs/"  # volattrs/{volid}: notes, protected
METRIC_SERVERS = "metricserver/"  # metricserver/{id}: an external metric server (graphite...)


def node_info(node: str) -> str:
    return f"{NODE_INFO}{node}"


def node_alive(node: str) -> str:
    return f"{NODE_ALIVE}{node}"


def node_status(node: str) -> str:
    return f"{NODE_STATUS}{node}"


def guest(vmid: int) -> str:
    return f"{GUESTS}{vmid}"


def guest_status(node: str, vmid: int | str) -> str:
    return f"{GUEST_STATUS}{node}/{vmid}"


def guest_status_prefix(node: str) -> str:
    return f"{GUEST_STATUS}{node}/"


def guest_status_vmid(key: str) -> str | None:
    """The VMID (a string) of a gueststatus/{node}/{vmid} key; None for another key."""
    node, sep, vmid = key[len(GUEST_STATUS) :].partition("/")
    return vmid if sep and node and vmid.isdigit() else None


def vmid_reservation(vmid: int) -> str:
    return f"{VMID_RESERVED}{vmid}"


def storage(storage_id: str) -> str:
    return f"{STORAGE}{storage_id}"


def storage_status(node: str) -> str:
    return f"{STORAGE_STATUS}{node}"


def volume_attrs(volid: str) -> str:
    return f"{VOLUME_ATTRS}{volid}"


def metric_server(server_id: str) -> str:
    return f"{METRIC_SERVERS}{server_id}"


BACKUP_JOBS = "backupjobs/"  # backupjobs/{id}: a scheduled backup job (/cluster/backup)
BACKUP_JOB_STATE = "backupjobstate/"  # backupjobstate/{id}/{node}: the node's last run


def backup_job(id: str) -> str:
    return f"{BACKUP_JOBS}{id}"


def backup_job_state(id: str, node: str) -> str:
    return f"{BACKUP_JOB_STATE}{id}/{node}"
