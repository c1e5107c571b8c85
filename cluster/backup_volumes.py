"""Which volumes of a guest a backup takes, and why (Proxmox's rules, also
answered by `GET /cluster/backup/{id}/included_volumes`).

- CT: the root filesystem always; a volume mount point only with `backup=1`
  (the flag's default is 0); a bind or device mount point never.
- VM: every disk unless it says `backup=0`, the EFI disk and TPM state too.
  CD-ROMs, kernels, unused volumes are not disks of the guest here.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import ct_archive, snapshots
from corral.cluster.guest_driver import GuestDriver


def _flags(text: Any) -> dict[str, str]:
    out = {}
    for part in str(text).split(",")[1:]:
        name, sep, value = part.partition("=")
        if sep:
            out[name.strip()] = value.strip()
    return out


def _on(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def volumes(driver: GuestDriver, type: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """[{id: config key, name: volume, included: bool, reason}] in key order."""
    out = []
    if type == "lxc":
        included, excluded = ct_archive.plan(ct_archive.mount_points(config))
        for key, mp in sorted(
            ct_archive.mount_points(config).items(), key=lambda kv: _order(kv[0])
        ):
            if key in included:
                reason = "rootfs" if key == "rootfs" else "enabled"
            else:
                reason = "disabled" if excluded[key] == "backup=0" else "not a volume"
            out.append({"id": key, "name": mp.get("volume", ""), "included": key in included,
                        "reason": reason})  # fmt: skip
        return out
    for key, volid in sorted(snapshots.snapshot_volumes(driver, config).items()):
        flag = _flags(config.get(key, "")).get("backup")
        if flag is not None and not _on(flag):
            item = {"included": False, "reason": "disabled"}
        elif key == "efidisk0":
            item = {"included": True, "reason": "efidisk"}
        elif key == "tpmstate0":
            item = {"included": True, "reason": "TPM"}
        else:
            item = {"included": True, "reason": "enabled" if flag is not None else "default"}
        out.append({"id": key, "name": volid, **item})
    return out


def _order(key: str) -> tuple[int, int]:
    return (0, 0) if key == "rootfs" else (1, int(key[2:]))
