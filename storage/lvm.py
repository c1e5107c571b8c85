"""`lvm`: VM disks as logical volumes of one volume group (Proxmox's LVM plugin).

    /dev/VG/vm-VMID-disk-N    a linear LV, raw, owned by VMID

Thick LVM has no cheap snapshots or clones (Proxmox offers none either): disks
are allocated, grown, copied and freed. `saferemove: 1` zeroes an LV before
removing it (under a `del-` name, so a half-wiped disk never looks like a
guest's), for storages shared over a SAN where the next LV could read the
previous tenant's data. `shared: 1` says every node sees the VG (iSCSI/FC).

The LVM tools are read through `--reportformat json --units b --nosuffix`
(parsed by `parse_report`); argv lists are built by small pure functions so
they can be checked without device-mapper.
"""

from __future__ import annotations

import json
import shutil
from typing import IO, Any, ClassVar

from corral.cluster.errors import CommandFailed, Conflict, NotFound, NotSupported, ParamError
from corral.cluster.schema import Param
from corral.cluster.undo import Reverter
from corral.storage.cmd import run
from corral.storage.plugin import StorageFull, StoragePlugin, check_size
from corral.storage.volid import VolName, check_content, check_disk_name, disk_name

LVM_TIMEOUT = 60.0
WIPE_TIMEOUT = 3600.0
CHUNK = 4 << 20
VG_NAME = Param(
    "string", "Volume group name.", pattern=r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*", max_length=127
)
LV_FIELDS = (
    "vg_name",
    "lv_name",
    "lv_size",
    "lv_attr",
    "pool_lv",
    "origin",
    "data_percent",
    "metadata_percent",
    "snap_percent",
    "uuid",
    "tags",
    "metadata_size",
    "time",
)
VG_FIELDS = ("vg_name", "vg_size", "vg_free", "lv_count")
_RAW = frozenset({"raw"})


# -- reports --------------------------------------------------------------------------
def parse_report(text: str, kind: str) -> list[dict[str, str]]:
    """Rows of `lvs|vgs|pvs --reportformat json` ({"report": [{"lv": [...]}]})."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CommandFailed(cmd=f"{kind}s", stderr=f"unparsable report: {exc}") from None
    rows: list[dict[str, str]] = []
    for part in data.get("report", []):
        for row in part.get(kind, []):
            # lvs names some fields lv_uuid/lv_tags/... whatever -o said: normalise.
            rows.append(
                {
                    k[3:]
                    if k[3:] in ("uuid", "tags", "metadata_size", "time") and k.startswith("lv_")
                    else k: v
                    for k, v in row.items()
                }
            )
    return rows


def number(value: str) -> int:
    return int(float(value)) if value not in ("", None) else 0


def percent(value: str) -> float:
    return float(value) if value not in ("", None) else 0.0


def report_argv(tool: str, fields: tuple[str, ...], target: str) -> list[str]:
    argv = [tool, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", ",".join(fields)]
    if tool == "lvs":
        argv += ["--config", 'report/time_format="%s"']
    return argv + [target]


def lvm(argv: list[str], *, timeout: float = LVM_TIMEOUT) -> str:
    try:
        return run(argv, timeout=timeout).stdout.decode()
    except CommandFailed as exc:
        text = str(exc)
        if "not found" in text or "Failed to find logical volume" in text:
            raise NotFound(what=f"'{argv[-1]}'") from exc
        if "already exists" in text:
            raise Conflict(f"'{argv[-1]}' already exists") from exc
        if "Insufficient free space" in text or "insufficient" in text.lower():
            raise StorageFull(detail=text) from exc
        raise


def lvs(target: str) -> list[dict[str, str]]:
    return parse_report(lvm(report_argv("lvs", LV_FIELDS, target)), "lv")


def vgs(vg: str) -> list[dict[str, str]]:
    return parse_report(lvm(report_argv("vgs", VG_FIELDS, vg)), "vg")


# -- argv -------------------------------------------------------------------------------
def lvcreate_argv(vg: str, name: str, size: int, *, tag: str | None = None) -> list[str]:
    argv = ["lvcreate", "-aly", "-Wy", "--yes", "--size", f"{size}b", "--name", name]
    if tag:
        argv += ["--addtag", tag]
    return argv + [vg]


def lvremove_argv(vg: str, name: str) -> list[str]:
    return ["lvremove", "-f", f"{vg}/{name}"]


def lvextend_argv(vg: str, name: str, size: int) -> list[str]:
    return ["lvextend", "-L", f"{size}b", f"{vg}/{name}"]


def lvrename_argv(vg: str, old: str, new: str) -> list[str]:
    return ["lvrename", vg, old, new]


def wipe_argv(device: str) -> list[str]:
    """Zero the whole LV (blkdiscard -z writes zeroes even where discard is unsupported)."""
    return ["blkdiscard", "-z", device]


class LvmPlugin(StoragePlugin):
    type = "lvm"
    content = frozenset({"images", "rootdir"})
    default_content = frozenset({"images"})
    formats: ClassVar[tuple[str, ...]] = ("raw",)
    options = {
        "vgname": VG_NAME,
        "saferemove": Param("boolean", "Zero data when removing LVs.", optional=True, default=0),
        "tagged_only": Param(
            "boolean", "Only use logical volumes tagged with 'pve-vm-ID'.", optional=True, default=0
        ),
    }
    features = {
        "copy": {"base": _RAW, "current": _RAW},
        "resize": {"current": _RAW},
        "rename": {"current": _RAW},
    }

    def vg(self, cfg: dict[str, Any]) -> str:
        return str(cfg["vgname"])

    def device(self, cfg: dict[str, Any], name: str) -> str:
        return f"/dev/{self.vg(cfg)}/{name}"

    # -- storage ------------------------------------------------------------------------
    def activate(self, cfg: dict[str, Any]) -> None:
        if not vgs(self.vg(cfg)):
            raise NotFound(what=f"volume group '{self.vg(cfg)}'")

    def status(self, cfg: dict[str, Any]) -> dict[str, Any]:
        rows = vgs(self.vg(cfg))
        if not rows:
            return {"total": 0, "used": 0, "avail": 0, "active": False}
        return vg_status(rows[0])

    # -- volumes ------------------------------------------------------------------------
    def _rows(self, cfg: dict[str, Any]) -> list[dict[str, str]]:
        return lvs(self.vg(cfg))

    def _lv(self, cfg: dict[str, Any], volname: str) -> tuple[VolName, dict[str, str]]:
        vol = self.parse_volname(cfg, volname=volname)
        for row in self._rows(cfg):
            if row["lv_name"] == vol.name:
                return vol, row
        raise NotFound(what=f"volume '{volname}'")

    def _check_alloc(
        self,
        cfg: dict[str, Any],
        *,
        vmid: int,
        size: int,
        fmt: str | None,
        content: str,
        name: str | None,
    ) -> None:
        check_size(size)
        check_content(content, self.enabled_content(cfg))
        if content not in ("images", "rootdir"):
            raise ParamError.one("content", f"cannot allocate volumes of content {content}")
        if fmt not in (None, "raw"):
            raise ParamError.one("format", f"unsupported format '{fmt}' on {self.type} storage")
        if size <= 0:
            raise ParamError.one("size", "a logical volume needs a size")
        if name is not None:
            m = check_disk_name(name, vmid=vmid)
            if m.group(4) or m.group(1) != "vm":
                raise ParamError.one("name", f"illegal name '{name}' - should be 'vm-{vmid}-*'")

    def free_name(self, cfg: dict[str, Any], vmid: int) -> str:
        return next_free_name({r["lv_name"] for r in self._rows(cfg)}, vmid)

    def alloc(
        self,
        cfg: dict[str, Any],
        *,
        vmid: int,
        size: int,
        fmt: str | None = None,
        content: str = "images",
        name: str | None = None,
    ) -> str:
        self._check_alloc(cfg, vmid=vmid, size=size, fmt=fmt, content=content, name=name)
        for _ in range(100):
            target = name or self.free_name(cfg, vmid)
            try:
                lvm(self._create_argv(cfg, target, size, vmid))
            except Conflict:
                if name is not None:
                    raise
                continue  # a concurrent alloc took this index: LVM refuses a second one
            return target
        raise Conflict(f"no free disk name for VM {vmid}")

    def _create_argv(self, cfg: dict[str, Any], name: str, size: int, vmid: int) -> list[str]:
        return lvcreate_argv(self.vg(cfg), name, size, tag=f"pve-vm-{vmid}")

    def free(self, cfg: dict[str, Any], *, volname: str) -> None:
        vol, _ = self._lv(cfg, volname)
        vg = self.vg(cfg)
        if not int(cfg.get("saferemove") or 0):
            lvm(lvremove_argv(vg, vol.name))
            return
        doomed = f"del-{vol.name}"
        lvm(lvrename_argv(vg, vol.name, doomed))
        lvm(wipe_argv(self.device(cfg, doomed)), timeout=WIPE_TIMEOUT)
        lvm(lvremove_argv(vg, doomed))

    def size(self, cfg: dict[str, Any], *, volname: str) -> int:
        return number(self._lv(cfg, volname)[1]["lv_size"])

    def resize(self, cfg: dict[str, Any], *, volname: str, size: int) -> None:
        check_size(size)
        vol, row = self._lv(cfg, volname)
        if size < number(row["lv_size"]):
            raise ParamError.one("size", "shrinking disks is not supported")
        lvm(lvextend_argv(self.vg(cfg), vol.name, size))

    def list_volumes(
        self, cfg: dict[str, Any], *, content: str | None = None, vmid: int | None = None
    ) -> list[dict[str, Any]]:
        if content not in (None, "images"):
            return []
        return volumes_from_lvs(
            self._rows(cfg),
            vg=self.vg(cfg),
            vmid=vmid,
            tagged_only=bool(int(cfg.get("tagged_only") or 0)),
        )

    def qemu_disk(self, cfg: dict[str, Any], *, volname: str) -> dict[str, Any]:
        vol, _ = self._lv(cfg, volname)
        lvm(["lvchange", "-aly", f"{self.vg(cfg)}/{vol.name}"])  # a shared VG: active here
        return {"kind": "block", "path": self.device(cfg, vol.name), "format": "raw"}

    def file_path(self, cfg: dict[str, Any], *, volname: str) -> str:
        return self.device(cfg, self.parse_volname(cfg, volname=volname).name)

    def mount_rootdir(self, cfg: dict[str, Any], *, volname: str) -> str:
        raise NotSupported(
            what=f"container roots on {self.type} storage (they need a mkfs "
            "and mount of the LV, not done by corral yet)"
        )

    # -- copies and streams -------------------------------------------------------------
    def copy_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        if snap is not None:
            raise NotSupported(what=f"copies of snapshots on {self.type} storage")
        self.require_feature(cfg, feature="copy", volname=volname)
        vol, row = self._lv(cfg, volname)
        new = self.alloc(cfg, vmid=vmid, size=number(row["lv_size"]))
        with Reverter() as undo:
            undo.add(lambda: self.free(cfg, volname=new))
            run(
                [
                    "qemu-img",
                    "convert",
                    "-n",
                    "-f",
                    "raw",
                    "-O",
                    "raw",
                    self.device(cfg, vol.name),
                    self.device(cfg, new),
                ],
                timeout=WIPE_TIMEOUT,
            )
            undo.success()
        return new

    def export_formats(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        return ["raw"]

    def export(
        self,
        cfg: dict[str, Any],
        *,
        volname: str,
        fmt: str,
        out: IO[bytes],
        snap: str | None = None,
    ) -> None:
        if fmt != "raw" or snap is not None:
            raise ParamError.one("format", f"cannot export '{volname}' as {fmt}")
        with open(self.qemu_disk(cfg, volname=volname)["path"], "rb") as f:
            shutil.copyfileobj(f, out, CHUNK)

    def import_(
        self,
        cfg: dict[str, Any],
        *,
        stream: IO[bytes],
        fmt: str,
        vmid: int,
        content: str = "images",
        size: int | None = None,
    ) -> str:
        if fmt != "raw":
            raise ParamError.one("format", f"cannot import format {fmt} into {self.type}")
        if not size:
            raise ParamError.one("size", "an import into LVM needs the size up front")
        new = self.alloc(cfg, vmid=vmid, size=size, content=content)
        with Reverter() as undo:
            undo.add(lambda: self.free(cfg, volname=new))
            with open(self.qemu_disk(cfg, volname=new)["path"], "r+b") as f:
                shutil.copyfileobj(stream, f, CHUNK)
            undo.success()
        return new


# -- pure helpers (shared with lvmthin) -----------------------------------------------
def next_free_name(taken: set[str], vmid: int) -> str:
    taken = taken | {n.replace("base-", "vm-", 1) for n in taken}
    for n in range(10000):
        if disk_name(vmid, n) not in taken:
            return disk_name(vmid, n)
    raise Conflict(f"no free disk name for VM {vmid}")


def vg_status(row: dict[str, str]) -> dict[str, Any]:
    total, free = number(row["vg_size"]), number(row["vg_free"])
    return {"total": total, "used": total - free, "avail": free, "active": True}


def is_guest_lv(row: dict[str, str], vg: str) -> VolName | None:
    """The parsed name of a guest disk LV of `vg`, or None (pools, hidden, foreign LVs)."""
    from corral.storage.volid import parse_block_volname

    if row.get("vg_name") != vg or row["lv_attr"][:1] in ("t", "e", "T", "i", "l"):
        return None
    try:
        return parse_block_volname(row["lv_name"])
    except ParamError:
        return None


def volumes_from_lvs(
    rows: list[dict[str, str]], *, vg: str, vmid: int | None = None, tagged_only: bool = False
) -> list[dict[str, Any]]:
    """Thick LVM: plain LVs (no pool) of `vg` with guest disk names."""
    out = []
    for row in rows:
        vol = is_guest_lv(row, vg)
        if vol is None or row.get("pool_lv") or (vmid is not None and vol.vmid != vmid):
            continue
        if tagged_only and f"pve-vm-{vol.vmid}" not in row.get("tags", "").split(","):
            continue
        out.append(
            {
                "volname": vol.name,
                "content": "images",
                "format": "raw",
                "size": number(row["lv_size"]),
                "vmid": vol.vmid,
                "ctime": number(row.get("time", "")),
            }
        )
    return sorted(out, key=lambda r: r["volname"])
