"""zfspool beyond the contract: listing parsers and ZFS-specific rules on a real zfs-fuse."""

from __future__ import annotations

from typing import Any

import pytest

from corral.cluster.errors import Conflict, NotSupported, ParamError
from corral.storage import zfspool
from corral.storage.volumes import Volumes

# `zfs list -H -p -o name,type,volsize,refquota,origin,used -t filesystem,volume -d 1 tank`
# as OpenZFS prints it: tabs, exact bytes, '-' where a property does not apply.
OPENZFS_LIST = (
    "tank\tfilesystem\t-\t0\t-\t1234567\n"
    "tank/base-100-disk-0\tvolume\t4294967296\t-\t-\t4300000000\n"
    "tank/vm-101-disk-0\tvolume\t4294967296\t-\ttank/base-100-disk-0@__base__\t8192\n"
    "tank/subvol-102-disk-0\tfilesystem\t-\t8589934592\t-\t600000\n"
    "tank/subvol-103-disk-0\tfilesystem\t-\t0\ttank/subvol-102-disk-0@s1\t1000\n"
    "tank/scratch\tfilesystem\t-\t0\t-\t100\n"
)
# `zfs get -H -p -o name,property,value -d 1 type,volsize,refquota,origin,used tank`
# as zfs-fuse 0.7 printed it (its `zfs list` has no -p).
ZFS_FUSE_GET = (
    "tank\ttype\tfilesystem\ntank\tvolsize\t-\ntank\trefquota\t0\ntank\torigin\t-\n"
    "tank\tused\t704512\n"
    "tank/subvol-102-disk-0\ttype\tfilesystem\ntank/subvol-102-disk-0\tvolsize\t-\n"
    "tank/subvol-102-disk-0\trefquota\t16777216\ntank/subvol-102-disk-0\torigin\t-\n"
    "tank/subvol-102-disk-0\tused\t114688\n"
)


def test_parse_list_and_get_agree() -> None:
    rows = zfspool.parse_list(OPENZFS_LIST)
    assert rows[3] == {
        "name": "tank/subvol-102-disk-0",
        "type": "filesystem",
        "volsize": "-",
        "refquota": "8589934592",
        "origin": "-",
        "used": "600000",
    }
    got = zfspool.parse_get(ZFS_FUSE_GET)
    assert [r["name"] for r in got] == ["tank", "tank/subvol-102-disk-0"]
    assert got[1]["refquota"] == "16777216" and got[1]["type"] == "filesystem"
    with pytest.raises(Exception, match="unexpected line"):
        zfspool.parse_list("tank\tfilesystem\n")


def test_listing_names_clones_of_bases() -> None:
    rows = zfspool.parse_list(OPENZFS_LIST)
    listed = zfspool.volumes_from_rows(rows, kinds={"images", "rootdir"})
    assert [(r["volname"], r["format"], r["size"]) for r in listed] == [
        ("base-100-disk-0", "raw", 4294967296),
        ("base-100-disk-0/vm-101-disk-0", "raw", 4294967296),
        ("subvol-102-disk-0", "subvol", 8589934592),
        ("subvol-103-disk-0", "subvol", 0),
    ]
    only = zfspool.volumes_from_rows(rows, kinds={"rootdir"}, vmid=102)
    assert [r["volname"] for r in only] == ["subvol-102-disk-0"]


@pytest.fixture
def zvols(zfs_fuse: Any) -> tuple[Volumes, str]:
    cfg = {"type": "zfspool", "pool": f"{zfs_fuse.pool}/store", "content": "images,rootdir"}
    return Volumes(lambda: {"crlstz": cfg}, node="n1"), "crlstz"


def test_zvols_are_refused_clearly_on_zfs_fuse(zvols: tuple[Volumes, str]) -> None:
    vols, sid = zvols
    with pytest.raises(NotSupported, match="zvol"):
        vols.alloc(sid, 350, size=1 << 20)
    assert vols.list_volumes(sid, vmid=350) == []


def test_rollback_only_to_the_latest_snapshot(zvols: tuple[Volumes, str]) -> None:
    vols, sid = zvols
    volid = vols.alloc(sid, 351, size=16 << 20, content="rootdir")
    try:
        vols.snapshot(volid, "one")
        vols.snapshot(volid, "two")
        with pytest.raises(Conflict, match="more recent snapshots exist: two"):
            vols.snapshot_rollback(volid, "one")
        vols.snapshot_delete(volid, "two")
        vols.snapshot_rollback(volid, "one")
        assert vols.snapshots(volid) == ["one"]
        vols.resize(volid, 32 << 20)
        assert vols.size(volid) == 32 << 20
        with pytest.raises(ParamError):
            vols.resize(volid, 8 << 20)
    finally:
        vols.free(volid)


def test_a_snapshot_with_clones_cannot_go(zvols: tuple[Volumes, str]) -> None:
    vols, sid = zvols
    volid = vols.alloc(sid, 352, size=0, content="rootdir")
    vols.snapshot(volid, "s")
    clone = vols.clone(volid, 353, snap="s")
    try:
        with pytest.raises(Conflict):
            vols.free(volid)  # the clone still depends on its snapshot
    finally:
        vols.free(clone)
        vols.free(volid)
