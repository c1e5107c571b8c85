"""Proxmox method options that corral accepts without effect, declared per method.

Clients written for Proxmox send options corral has no use for (Ansible's
Proxmox modules always send `force=0` when creating a container). Each
option Proxmox defines for a method corral implements is either implemented
by that endpoint, or declared here (or, for guest config keys, in the
driver's config schema) as ignored — accepted, validated by type, dropped,
and named in the started task's log — or as refused with the reason when the
value would need something corral lacks (`unsupported`, or `ignored` with
`noop=` the harmless values). tests/web/test_pve_params.py checks these lists
against the Proxmox API schema.

Config keys (what a guest *is*) live with each driver's config schema
(corral.lxc.config, corral.kvm.config); these are options of one call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import replace

from corral.cluster.schema import Param, Schema, ignored, unsupported
from corral.web.api import Endpoint

_RESTORE = "corral restores every volume before the guest starts (no live restore)"
_BWLIMIT = "corral does not throttle volume copies"
_HA = "make it an HA resource through /cluster/ha/resources"
_LOCKS = "corral never skips guest locks"
_MIGRATION = "an internal option of Proxmox's own migration"
_KEEP = "volumes stay as their storage plugin keeps them"

_IMPORT_STORAGE = ignored(
    "string",
    "Storage for intermediate extraction of imported disks.",
    "corral imports disks straight into their target storage",
    format="pve-storage-id",
)
_FORCE_REMOVE = ignored(
    "boolean",
    "Force physical removal of deleted disks.",
    "corral keeps a detached disk as unusedN",
    noop=(0,),
)

# force, unique, restore, archive and storage are the create endpoint's own (restores).
_CREATE: dict[str, Param] = {
    "ha-managed": ignored(
        "boolean", "Add the guest as a HA resource after it was created.", _HA, noop=(0,)
    ),
}

METHODS: dict[tuple[str, str], dict[str, Param]] = {
    ("POST", "/nodes/{node}/lxc"): {
        **_CREATE,
        "bwlimit": ignored("number", "I/O bandwidth limit (KiB/s).", _BWLIMIT, minimum=0),
        "ignore-unpack-errors": ignored(
            "boolean",
            "Ignore errors when extracting the template.",
            "corral's unpacker skips what an unprivileged container cannot hold and fails "
            "on real errors",
        ),
    },
    ("POST", "/nodes/{node}/qemu"): {
        **_CREATE,
        "bwlimit": ignored("integer", "I/O bandwidth limit (KiB/s).", _BWLIMIT, minimum=0),
        "live-restore": ignored(
            "boolean", "Start the VM while restoring in the background.", _RESTORE, noop=(0,)
        ),
        "import-working-storage": _IMPORT_STORAGE,
    },
    ("PUT", "/nodes/{node}/qemu/{vmid}/config"): {"force": _FORCE_REMOVE},
    ("POST", "/nodes/{node}/qemu/{vmid}/config"): {
        "force": _FORCE_REMOVE,
        "import-working-storage": _IMPORT_STORAGE,
        "background_delay": ignored(
            "integer",
            "Time to wait for the task to finish.",
            "corral always answers with the task's UPID at once",
            minimum=1,
            maximum=30,
        ),
    },
    ("GET", "/nodes/{node}/qemu"): {
        "full": ignored("boolean", "Determine the full status.", "corral always does"),
    },
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start"): {
        "debug": ignored(
            "boolean", "Start with debug log-level.", "liblxc logs at corrald's log level"
        ),
    },
    ("POST", "/nodes/{node}/qemu/{vmid}/status/start"): {
        "force-cpu": unsupported(
            "string", "Override QEMU's -cpu argument.", "set `cpu` in the VM's config"
        ),
        "machine": unsupported(
            "string", "Specify the QEMU machine.", "set `machine` in the VM's config"
        ),
        "migratedfrom": unsupported("string", "The cluster node name.", _MIGRATION),
        "migration_network": unsupported(
            "string", "CIDR of the migration network.", _MIGRATION, format="CIDR"
        ),
        "migration_type": unsupported(
            "string", "Migration traffic type.", _MIGRATION, enum=("secure", "insecure")
        ),
        "nets-host-mtu": unsupported("string", "VirtIO devices' MTUs.", _MIGRATION),
        "stateuri": unsupported("string", "Restore state from this location.", _MIGRATION),
        "targetstorage": unsupported("string", "Source to target storage map.", _MIGRATION),
        "with-conntrack-state": ignored(
            "boolean", "Whether to migrate conntrack entries.", _MIGRATION, noop=(0,)
        ),
    },
    ("POST", "/nodes/{node}/qemu/{vmid}/status/stop"): {
        "keepActive": ignored("boolean", "Do not deactivate storage volumes.", _KEEP),
        "migratedfrom": unsupported("string", "The cluster node name.", _MIGRATION),
    },
    ("POST", "/nodes/{node}/qemu/{vmid}/status/shutdown"): {
        "keepActive": ignored("boolean", "Do not deactivate storage volumes.", _KEEP),
        "skiplock": ignored("boolean", "Ignore locks.", _LOCKS, noop=(0,)),
    },
    ("POST", "/nodes/{node}/qemu/{vmid}/status/suspend"): {
        "skiplock": ignored("boolean", "Ignore locks.", _LOCKS, noop=(0,)),
        "todisk": ignored(
            "boolean", "Suspend to disk (hibernate).", "corral suspends to RAM only", noop=(0,)
        ),
        "statestorage": ignored(
            "string",
            "The storage for the VM state.",
            "only used when suspending to disk",
            format="pve-storage-id",
        ),
    },
    ("POST", "/nodes/{node}/qemu/{vmid}/status/resume"): {
        "skiplock": ignored("boolean", "Ignore locks.", _LOCKS, noop=(0,)),
        "nocheck": ignored("boolean", "Skip the state check.", _MIGRATION, noop=(0,)),
    },
    ("PUT", "/nodes/{node}/qemu/{vmid}/resize"): {
        "skiplock": ignored("boolean", "Ignore locks.", _LOCKS, noop=(0,)),
    },
    ("POST", "/nodes/{node}/qemu/{vmid}/migrate"): {
        "with-conntrack-state": ignored(
            "boolean", "Whether to migrate conntrack entries.", "corral does not", noop=(0,)
        ),
    },
}


# Where the rest of an `additional` endpoint's parameters are declared.
_GUEST_CONFIG = {"lxc": "corral.lxc.config", "qemu": "corral.kvm.config"}


def guest_config(type: str) -> Callable[[], Schema]:
    def schema() -> Schema:
        try:
            return importlib.import_module(_GUEST_CONFIG[type]).SCHEMA  # type: ignore[no-any-return]
        except ImportError:  # the guest type is not installed on this node
            return Schema({})

    return schema


def storage_options() -> Schema:
    """Every option of every installed storage type (the type picks what applies)."""
    from corral.cluster import registry

    plugins = registry.load(registry.STORAGE_PLUGINS)
    props: dict[str, Param] = {}
    for cls in plugins.values():
        for name, param in cls.schema().props.items():
            props.setdefault(name, replace(param, optional=True))
    props["type"] = Param("string", "Storage type.", enum=tuple(sorted(plugins)))
    return Schema(props)


BODIES: dict[tuple[str, str], Callable[[], Schema]] = {
    ("POST", "/nodes/{node}/lxc"): guest_config("lxc"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/config"): guest_config("lxc"),
    ("POST", "/nodes/{node}/qemu"): guest_config("qemu"),
    ("PUT", "/nodes/{node}/qemu/{vmid}/config"): guest_config("qemu"),
    ("POST", "/nodes/{node}/qemu/{vmid}/config"): guest_config("qemu"),
    ("POST", "/storage"): storage_options,
    ("PUT", "/storage/{storage}"): storage_options,
}


def declare(endpoints: Iterable[Endpoint]) -> None:
    """Add the declared options to their endpoints (an endpoint's own declaration wins),
    and say where the rest of an `additional` endpoint's parameters are declared."""
    for ep in endpoints:
        for name, param in METHODS.get((ep.method, ep.path), {}).items():
            ep.params.props.setdefault(name, param)
        if ep.params.additional and ep.body is None:
            ep.body = BODIES.get((ep.method, ep.path))
