"""LVM and LVM-thin: report parsing, argv building, and reads of a real volume group.

This kernel has no device-mapper, so no LV can be created or activated here.
What does work for real: pvcreate/vgcreate on a loop device and
`vgcfgrestore` of VG metadata that describes LVs (linear, thin pool, thin
volumes, a thin snapshot, a base and its linked clone) - LVM then reports
those LVs from the metadata on disk. `data/lvm-vg-metadata.txt` is that
metadata; `data/lvs.json` and `data/vgs.json` are what the real lvs/vgs
printed for it. The full contract test on a real VG waits below, skipped
until it runs on a kernel with device-mapper.
"""

from __future__ import annotations

import os
import random
import re
import string
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster.errors import NotFound, ParamError
from corral.storage import lvm as lvm_mod
from corral.storage import lvmthin
from corral.storage.lvm import LvmPlugin, parse_report
from corral.storage.lvmthin import LvmThinPlugin
from corral.storage.volumes import Volumes
from tests.storage import loopfs

DATA = Path(__file__).parent / "data"
MiB = 1 << 20
NO_CONFIG_BACKUP = ["--config", "backup { backup = 0 archive = 0 }"]


def _report(name: str, kind: str) -> list[dict[str, str]]:
    return parse_report((DATA / name).read_text(), kind)


# -- parsing the captured reports -------------------------------------------------------


def test_parse_lvs_report_normalises_fields() -> None:
    rows = _report("lvs.json", "lv")
    assert len(rows) == 7
    row = next(r for r in rows if r["lv_name"] == "vm-100-disk-0")
    assert row["lv_size"] == "8388608" and row["tags"] == "pve-vm-100"
    assert row["uuid"] and row["time"] == "1796224447"


def test_parse_vgs_report_and_status() -> None:
    (row,) = _report("vgs.json", "vg")
    assert lvm_mod.vg_status(row) == {
        "total": 264241152,
        "used": 264241152 - 209715200,
        "avail": 209715200,
        "active": True,
    }


def test_thick_listing_skips_pools_thin_and_foreign_lvs() -> None:
    rows = _report("lvs.json", "lv")
    vols = lvm_mod.volumes_from_lvs(rows, vg="crlstvg")
    assert [(v["volname"], v["size"], v["vmid"]) for v in vols] == [
        ("vm-100-disk-0", 8 * MiB, 100),
        ("vm-100-disk-1", 4 * MiB, 100),
    ]
    tagged = lvm_mod.volumes_from_lvs(rows, vg="crlstvg", tagged_only=True)
    assert [v["volname"] for v in tagged] == ["vm-100-disk-0"]
    assert lvm_mod.volumes_from_lvs(rows, vg="othervg") == []
    assert lvm_mod.volumes_from_lvs(rows, vg="crlstvg", vmid=101) == []


def test_thin_listing_names_linked_clones_after_their_base() -> None:
    rows = _report("lvs.json", "lv")
    vols = lvmthin.thin_volumes(rows, vg="crlstvg", pool="data")
    assert [v["volname"] for v in vols] == [
        "base-102-disk-0",
        "base-102-disk-0/vm-103-disk-0",
        "vm-101-disk-0",
    ]
    assert lvmthin.thin_snapshots(rows, vg="crlstvg", name="vm-101-disk-0") == ["before"]
    assert lvmthin.thin_snapshots(rows, vg="crlstvg", name="vm-103-disk-0") == []
    assert [v["vmid"] for v in lvmthin.thin_volumes(rows, vg="crlstvg", pool="data", vmid=103)] == [
        103
    ]


def test_thin_pool_status() -> None:
    rows = _report("lvs.json", "lv")
    # Inactive here (no device-mapper), so lvs has no data_percent: nothing counted used.
    assert lvmthin.pool_status(rows, vg="crlstvg", pool="data")["total"] == 32 * MiB
    active = [{**r, "data_percent": "25.00"} if r["lv_name"] == "data" else r for r in rows]
    st = lvmthin.pool_status(active, vg="crlstvg", pool="data")
    assert (st["used"], st["avail"]) == (8 * MiB, 24 * MiB)
    with pytest.raises(NotFound):
        lvmthin.pool_status(rows, vg="crlstvg", pool="vm-101-disk-0")  # not a pool


def test_unparsable_report_is_an_error() -> None:
    with pytest.raises(Exception, match="unparsable"):
        parse_report("  WARNING: something\n", "lv")


# -- argv -------------------------------------------------------------------------------


def test_argv_building() -> None:
    assert lvm_mod.report_argv("vgs", lvm_mod.VG_FIELDS, "vg0") == [
        "vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
        "-o", "vg_name,vg_size,vg_free,lv_count", "vg0",
    ]  # fmt: skip
    assert lvm_mod.report_argv("lvs", ("lv_name",), "vg0")[-3:] == [
        "--config",
        'report/time_format="%s"',
        "vg0",
    ]
    assert lvm_mod.lvcreate_argv("vg0", "vm-100-disk-0", 4 * MiB, tag="pve-vm-100") == [
        "lvcreate", "-aly", "-Wy", "--yes", "--size", "4194304b", "--name", "vm-100-disk-0",
        "--addtag", "pve-vm-100", "vg0",
    ]  # fmt: skip
    assert lvm_mod.lvremove_argv("vg0", "vm-100-disk-0") == ["lvremove", "-f", "vg0/vm-100-disk-0"]
    assert lvm_mod.lvextend_argv("vg0", "vm-100-disk-0", 8 * MiB) == [
        "lvextend",
        "-L",
        "8388608b",
        "vg0/vm-100-disk-0",
    ]
    assert lvmthin.thin_create_argv("vg0", "data", "vm-1-disk-0", MiB)[-2:] == [
        "--thinpool",
        "vg0/data",
    ]
    assert lvmthin.thin_snapshot_argv("vg0", "vm-100-disk-0", "snap_vm-100-disk-0_s1",
                                      skip_activation=True) == [
        "lvcreate", "-s", "-ky", "-n", "snap_vm-100-disk-0_s1", "vg0/vm-100-disk-0",
    ]  # fmt: skip


def test_config_checks() -> None:
    assert LvmPlugin.check_config({"type": "lvm", "vgname": "pve"})["vgname"] == "pve"
    with pytest.raises(ParamError) as err:
        LvmPlugin.check_config({"type": "lvm", "vgname": "-rf"})
    assert "vgname" in err.value.errors
    with pytest.raises(ParamError) as err:
        LvmThinPlugin.check_config({"type": "lvmthin", "vgname": "pve", "thinpool": "../x"})
    assert "thinpool" in err.value.errors
    assert LvmThinPlugin().is_shared({"shared": 1}) is False


# -- a real volume group (metadata only: no device-mapper here) ---------------------------


def _lvm_id() -> str:
    chars = string.ascii_letters + string.digits
    raw = "".join(random.choice(chars) for _ in range(32))
    cuts = (6, 4, 4, 4, 4, 4, 6)
    parts, i = [], 0
    for n in cuts:
        parts.append(raw[i : i + n])
        i += n
    return "-".join(parts)


def _lvm(argv: list[str]) -> str:
    env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
    proc = subprocess.run(argv, capture_output=True, timeout=60, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode()


def _forget_vg(vg: str) -> None:
    """LVM may still file a backup or archive copy of the VG's metadata: remove ours."""
    for folder in ("/etc/lvm/backup", "/etc/lvm/archive"):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name == vg or name.startswith(f"{vg}_"):
                os.unlink(os.path.join(folder, name))


@pytest.fixture(scope="module")
def real_vg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A VG of our own on a loop device, its LVs restored from the committed metadata."""
    base = tmp_path_factory.mktemp("crlst-lvm")
    vg = f"crlst{uuid.uuid4().hex[:8]}vg"
    text = (DATA / "lvm-vg-metadata.txt").read_text()
    text = text.replace("crlstvg {", f"{vg} {{")
    # Fresh ids: two runs at once must not see duplicate PVs or LVs.
    pv_id = _lvm_id()
    text = re.sub(r'id = "[^"]+"', lambda _m: f'id = "{_lvm_id()}"', text)
    text = re.sub(r'(pv0 \{\n\s+id = )"[^"]+"', lambda m: f'{m.group(1)}"{pv_id}"', text)
    meta = base / "vg.txt"
    meta.write_text(text)
    with loopfs.loop_device(str(base / "pv.img"), 256 * MiB) as dev:
        try:
            _lvm(["pvcreate", *NO_CONFIG_BACKUP, "-ff", "-y", "--uuid", pv_id,
                  "--restorefile", str(meta), dev])  # fmt: skip
            _lvm(["vgcfgrestore", *NO_CONFIG_BACKUP, "--force", "-f", str(meta), vg])
            yield vg
        finally:
            subprocess.run(["pvremove", "-ff", "-y", dev], capture_output=True, timeout=60,
                           check=False)  # fmt: skip
            _forget_vg(vg)


def test_real_vg_read_through_the_plugins(real_vg: str) -> None:
    cfgs = {
        "crlstlvm": {"type": "lvm", "vgname": real_vg},
        "crlstthin": {"type": "lvmthin", "vgname": real_vg, "thinpool": "data"},
    }
    vols = Volumes(lambda: cfgs, node="n1")
    assert [v["volid"] for v in vols.list_volumes("crlstlvm")] == [
        "crlstlvm:vm-100-disk-0",
        "crlstlvm:vm-100-disk-1",
    ]
    assert [v["volid"] for v in vols.list_volumes("crlstthin", vmid=103)] == [
        "crlstthin:base-102-disk-0/vm-103-disk-0"
    ]
    assert vols.snapshots("crlstthin:vm-101-disk-0") == ["before"]
    assert vols.size("crlstthin:vm-101-disk-0") == 16 * MiB
    st = vols.status("crlstlvm")
    assert st["active"] == 1 and st["total"] == 252 * MiB and st["avail"] == 200 * MiB, st
    assert vols.status("crlstthin")["total"] == 32 * MiB
    with pytest.raises(NotFound):
        vols.size("crlstlvm:vm-100-disk-9")
    with pytest.raises(ParamError) as err:
        vols.resize("crlstlvm:vm-100-disk-0", 4 * MiB)  # shrink: refused before any lvm call
    assert "size" in err.value.errors


def test_real_vg_missing_is_not_found() -> None:
    with pytest.raises(NotFound):
        LvmPlugin().activate({"type": "lvm", "vgname": f"crlst{uuid.uuid4().hex[:8]}none"})


# -- the full contract on a kernel with device-mapper --------------------------------------


def _device_mapper() -> bool:
    if not os.path.exists("/sys/module/dm_mod") and not os.path.exists("/dev/mapper/control"):
        return False
    return subprocess.run(["dmsetup", "version"], capture_output=True, timeout=30,
                          check=False).returncode == 0  # fmt: skip


needs_dm = pytest.mark.skipif(
    not _device_mapper(), reason="device-mapper is not available in this kernel (lvcreate fails)"
)


@pytest.fixture
def thin_vg(tmp_path: Path) -> Iterator[str]:
    vg = f"crlst{uuid.uuid4().hex[:8]}vg"
    with loopfs.loop_device(str(tmp_path / "pv.img"), 512 * MiB) as dev:
        try:
            _lvm(["pvcreate", *NO_CONFIG_BACKUP, "-y", dev])
            _lvm(["vgcreate", *NO_CONFIG_BACKUP, vg, dev])
            _lvm(["lvcreate", *NO_CONFIG_BACKUP, "--type", "thin-pool", "-L", "128M", "-n",
                  "data", vg])  # fmt: skip
            yield vg
        finally:
            subprocess.run(["vgremove", "-ff", "-y", vg], capture_output=True, timeout=120,
                           check=False)  # fmt: skip
            subprocess.run(["pvremove", "-ff", "-y", dev], capture_output=True, timeout=60,
                           check=False)  # fmt: skip
            _forget_vg(vg)


@needs_dm
@pytest.mark.parametrize("kind", ["lvm", "lvmthin"])
def test_real_lvm_contract(thin_vg: str, kind: str) -> None:
    cfg = {"type": kind, "vgname": thin_vg, "thinpool": "data"}
    vols = Volumes(lambda: {"crlst": cfg}, node="n1")
    volid = vols.alloc("crlst", 400, size=4 * MiB)
    assert vols.size(volid) == 4 * MiB
    with open(vols.qemu_disk(volid)["path"], "r+b") as f:
        f.write(b"\x11" * 4096)
    vols.resize(volid, 8 * MiB)
    assert vols.size(volid) == 8 * MiB
    if kind == "lvmthin":
        vols.snapshot(volid, "s1")
        with open(vols.qemu_disk(volid)["path"], "r+b") as f:
            f.write(b"\x22" * 4096)
        vols.snapshot_rollback(volid, "s1")
        with open(vols.qemu_disk(volid)["path"], "rb") as f:
            assert f.read(4096) == b"\x11" * 4096
        vols.snapshot_delete(volid, "s1")
        base = vols.create_base(volid)
        clone = vols.clone(base, 401)
        vols.free(clone)
        volid = base
    copy = vols.clone(volid, 402, full=True)
    vols.free(copy)
    vols.free(volid)
    with pytest.raises(NotFound):
        vols.free(volid)
