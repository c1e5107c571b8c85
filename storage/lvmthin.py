"""`lvmthin`: VM disks as thin LVs of one thin pool (Proxmox's LVM-thin plugin).

    VG/vm-VMID-disk-N               thin volume in VG/THINPOOL
    VG/snap_vm-VMID-disk-N_SNAP     its snapshot SNAP (a thin snapshot, activation skipped)
    VG/base-VMID-disk-N             a template's disk (read-only)
    base-X-disk-N/vm-VMID-disk-M    volume name of a linked clone (a thin snapshot of a base)

Thin snapshots are independent LVs sharing the pool's blocks, so rollback
makes a fresh snapshot of the snapshot and swaps names with the volume (each
step undone on failure), and deleting a base is refused while clones use it.
"""

from __future__ import annotations

from typing import Any

from corral.cluster.errors import Conflict, NotFound, ParamError
from corral.cluster.schema import Param
from corral.cluster.undo import Reverter
from corral.storage.lvm import (
    LvmPlugin,
    is_guest_lv,
    lvm,
    lvremove_argv,
    lvrename_argv,
    number,
    percent,
)
from corral.storage.plugin import check_snap
from corral.storage.volid import VolName

_RAW = frozenset({"raw"})


def snap_lv(name: str, snap: str) -> str:
    return f"snap_{name}_{snap}"


def thin_create_argv(vg: str, pool: str, name: str, size: int) -> list[str]:
    return ["lvcreate", "-V", f"{size}b", "--name", name, "--thinpool", f"{vg}/{pool}"]


def thin_snapshot_argv(vg: str, origin: str, name: str, *, skip_activation: bool) -> list[str]:
    """A thin snapshot; snapshots of guests stay inactive (-ky), clones are usable (-kn)."""
    return [
        "lvcreate",
        "-s",
        "-k" + ("y" if skip_activation else "n"),
        "-n",
        name,
        f"{vg}/{origin}",
    ]


def pool_status(rows: list[dict[str, str]], *, vg: str, pool: str) -> dict[str, Any]:
    """Thin pool usage from its lvs row: size and data_percent."""
    for row in rows:
        if row.get("vg_name") == vg and row["lv_name"] == pool and row["lv_attr"][:1] == "t":
            total = number(row["lv_size"])
            used = int(total * percent(row.get("data_percent", "")) / 100)
            return {"total": total, "used": used, "avail": total - used, "active": True}
    raise NotFound(what=f"thin pool '{vg}/{pool}'")


def thin_volumes(
    rows: list[dict[str, str]], *, vg: str, pool: str, vmid: int | None = None
) -> list[dict[str, Any]]:
    """Guest disks in `pool`; a clone of a base is listed as BASE/NAME (Proxmox's name)."""
    out = []
    for row in rows:
        vol = is_guest_lv(row, vg)
        if vol is None or row.get("pool_lv") != pool or (vmid is not None and vol.vmid != vmid):
            continue
        origin = row.get("origin", "")
        name = f"{origin}/{vol.name}" if origin.startswith("base-") else vol.name
        size = number(row["lv_size"])
        out.append(
            {
                "volname": name,
                "content": "images",
                "format": "raw",
                "size": size,
                "used": int(size * percent(row.get("data_percent", "")) / 100),
                "vmid": vol.vmid,
                "ctime": number(row.get("time", "")),
            }
        )
    return sorted(out, key=lambda r: r["volname"])


def thin_snapshots(rows: list[dict[str, str]], *, vg: str, name: str) -> list[str]:
    prefix = f"snap_{name}_"
    return sorted(
        # By name, as Proxmox: after a rollback the snapshots' origin LV is gone.
        r["lv_name"][len(prefix) :]
        for r in rows
        if r.get("vg_name") == vg and r["lv_name"].startswith(prefix)
    )


class LvmThinPlugin(LvmPlugin):
    type = "lvmthin"
    default_content = frozenset({"images", "rootdir"})
    shared_by_nature = False  # a thin pool is never shared between hosts
    options = {
        "vgname": LvmPlugin.options["vgname"],
        "thinpool": Param(
            "string",
            "LVM thin pool LV name.",
            pattern=r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*",
            max_length=127,
        ),
    }
    features = {
        "snapshot": {"current": _RAW, "snap": _RAW},
        "clone": {"base": _RAW, "snap": _RAW},
        "template": {"current": _RAW},
        "copy": {"base": _RAW, "current": _RAW},
        "resize": {"current": _RAW},
        "sparseinit": {"base": _RAW, "current": _RAW},
        "rename": {"current": _RAW},
    }

    def pool(self, cfg: dict[str, Any]) -> str:
        return str(cfg["thinpool"])

    def is_shared(self, cfg: dict[str, Any]) -> bool:
        return False

    def activate(self, cfg: dict[str, Any]) -> None:
        pool_status(self._rows(cfg), vg=self.vg(cfg), pool=self.pool(cfg))

    def status(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return pool_status(self._rows(cfg), vg=self.vg(cfg), pool=self.pool(cfg))

    def _create_argv(self, cfg: dict[str, Any], name: str, size: int, vmid: int) -> list[str]:
        return thin_create_argv(self.vg(cfg), self.pool(cfg), name, size)

    def list_volumes(
        self, cfg: dict[str, Any], *, content: str | None = None, vmid: int | None = None
    ) -> list[dict[str, Any]]:
        if content not in (None, "images"):
            return []
        return thin_volumes(self._rows(cfg), vg=self.vg(cfg), pool=self.pool(cfg), vmid=vmid)

    def free(self, cfg: dict[str, Any], *, volname: str) -> None:
        vol, _ = self._lv(cfg, volname)
        rows = self._rows(cfg)
        if vol.isbase and any(
            r.get("origin") == vol.name and not r["lv_name"].startswith(f"snap_{vol.name}_")
            for r in rows
        ):
            raise Conflict(f"base volume '{volname}' is still used by linked clones")
        vg = self.vg(cfg)
        for snap in thin_snapshots(rows, vg=vg, name=vol.name):
            lvm(lvremove_argv(vg, snap_lv(vol.name, snap)))
        lvm(lvremove_argv(vg, vol.name))

    # -- snapshots ------------------------------------------------------------------
    def snapshots(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        vol, _ = self._lv(cfg, volname)
        return thin_snapshots(self._rows(cfg), vg=self.vg(cfg), name=vol.name)

    def _snap(self, cfg: dict[str, Any], volname: str, snap: str) -> VolName:
        check_snap(snap)
        vol, _ = self._lv(cfg, volname)
        if snap not in thin_snapshots(self._rows(cfg), vg=self.vg(cfg), name=vol.name):
            raise NotFound(what=f"snapshot '{snap}' of '{volname}'")
        return vol

    def snapshot(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        check_snap(snap)
        vol, _ = self._lv(cfg, volname)
        lvm(
            thin_snapshot_argv(
                self.vg(cfg), vol.name, snap_lv(vol.name, snap), skip_activation=True
            )
        )

    def snapshot_delete(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        vol = self._snap(cfg, volname, snap)
        lvm(lvremove_argv(self.vg(cfg), snap_lv(vol.name, snap)))

    def snapshot_rollback(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        vol = self._snap(cfg, volname, snap)
        vg, fresh, old = self.vg(cfg), f"{vol.name}-rollback", f"del-{vol.name}"
        with Reverter() as undo:
            lvm(thin_snapshot_argv(vg, snap_lv(vol.name, snap), fresh, skip_activation=False))
            undo.add(lambda: lvm(lvremove_argv(vg, fresh)))
            lvm(lvrename_argv(vg, vol.name, old))
            undo.add(lambda: lvm(lvrename_argv(vg, old, vol.name)))
            lvm(lvrename_argv(vg, fresh, vol.name))
            undo.success()
        lvm(lvremove_argv(vg, old))

    # -- templates and clones ------------------------------------------------------------
    def create_base(self, cfg: dict[str, Any], *, volname: str) -> str:
        vol, _ = self._lv(cfg, volname)
        if vol.isbase or vol.base:
            raise ParamError.one("volume", f"'{volname}' is already a base or a linked clone")
        if self.snapshots(cfg, volname=volname):
            raise Conflict(f"'{volname}' has snapshots: delete them before making it a base")
        vg, new = self.vg(cfg), vol.name.replace("vm-", "base-", 1)
        with Reverter() as undo:
            lvm(lvrename_argv(vg, vol.name, new))
            undo.add(lambda: lvm(lvrename_argv(vg, new, vol.name)))
            lvm(["lvchange", "-an", "-pr", "--setactivationskip", "y", f"{vg}/{new}"])
            undo.success()
        return new

    def clone_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        vol = self.require_feature(cfg, feature="clone", volname=volname, snap=snap)
        origin = snap_lv(self._snap(cfg, volname, snap).name, snap) if snap else vol.name
        if snap is None and not vol.isbase:
            raise ParamError.one("volume", f"'{volname}' is not a base volume")
        vg = self.vg(cfg)
        for _ in range(100):
            new = self.free_name(cfg, vmid)
            try:
                lvm(thin_snapshot_argv(vg, origin, new, skip_activation=False))
            except Conflict:
                continue
            return f"{vol.name}/{new}" if snap is None else new
        raise Conflict(f"no free disk name for VM {vmid}")
