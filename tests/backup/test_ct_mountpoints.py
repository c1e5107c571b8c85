"""CT mount points in backups, as Proxmox has them: a volume mount point with
`backup=1` is archived under its path and restored onto the target storage;
one without the flag is left out of the archive and made again, empty."""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Callable

import pytest
from proxmoxer import ProxmoxAPI

from corral.cluster import ct_archive
from tests.backup.conftest import NODE, attach, destroy_all, new_vmid, task_ok
from tests.util import Corrald

pytestmark = pytest.mark.timeout(400)


def test_plan_and_owner() -> None:
    mps = ct_archive.mount_points({
        "rootfs": "b:subvol-1-disk-0,size=1G",
        "mp0": "b:subvol-1-disk-1,mp=/mnt/data/,backup=1",
        "mp1": "local:1/vm-1-disk-0.raw,mp=/mnt/skip",  # the flag's default: 0
        "mp2": "/srv/host,mp=/mnt/bind,backup=1",  # a bind mount is never backed up
        "mp3": "b:subvol-1-disk-2,mp=/mnt/data/deeper,backup=1",
        "memory": "64",
    })  # fmt: skip
    included, excluded = ct_archive.plan(mps)
    assert list(included) == ["rootfs", "mp0", "mp3"]
    assert included == {"rootfs": "", "mp0": "mnt/data", "mp3": "mnt/data/deeper"}
    assert excluded == {"mp1": "backup=0", "mp2": "bind or device mount point"}
    assert ct_archive.owner("etc/passwd", included) == ("rootfs", "etc/passwd")
    assert ct_archive.owner("mnt/data", included) == ("mp0", "")
    assert ct_archive.owner("mnt/data/x", included) == ("mp0", "x")
    assert ct_archive.owner("mnt/database", included) == ("rootfs", "mnt/database")
    assert ct_archive.owner("mnt/data/deeper/y", included) == ("mp3", "y")


def test_mount_points_archived_and_restored(
    node: Corrald, prox: ProxmoxAPI, btrfs: str, make_ct: Callable[..., int]
) -> None:
    n = prox.nodes(NODE)
    vmid = make_ct(btrfs, mp0=f"{btrfs}:0.1,mp=/mnt/data,backup=1",
                   mp1="local:0.1,mp=/mnt/skip")  # fmt: skip
    ct = n.lxc(vmid)
    task_ok(prox, ct.status.start.post())
    attach(node, vmid, "sh", "-c", "echo root > /marker && mkdir -p /mnt/data/sub && "
           "echo data > /mnt/data/sub/marker && ln /mnt/data/sub/marker /mnt/data/hard && "
           "echo skip > /mnt/skip/marker && sync")  # fmt: skip
    upid = n.vzdump.post(vmid=vmid, storage="local", compress="zstd", mode="snapshot")
    task_ok(prox, upid)
    log = "\n".join(r["t"] for r in n.tasks(upid).log.get(limit=500))
    assert "excluding mount point mp1" in log and "backup=0" in log, log
    assert "creating archive from snapshot 'vzdump'" in log, log  # both volumes are on btrfs
    (row,) = n.storage("local").content.get(content="backup", vmid=vmid)
    volid = row["volid"]
    path = node.data_dir / "local" / "dump" / volid.split("/", 1)[1]
    # One archive GNU tar lists as the CT's whole tree, the excluded mount point empty.
    listing = subprocess.run(["tar", "--zstd", "-tf", str(path)], capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()  # fmt: skip
    assert listing[0] == "./etc/vzdump/pct.conf"
    assert "./marker" in listing and "./mnt/data/sub/marker" in listing, listing
    assert "./mnt/data/hard" in listing
    assert "./mnt/skip/" in listing and "./mnt/skip/marker" not in listing, listing
    with subprocess.Popen(["zstd", "-dc", str(path)], stdout=subprocess.PIPE) as proc:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            hard = {m.name: m.linkname for m in tar if m.islnk()}
    # The hard link's target moved under the mount path too (which name is the
    # link depends on the directory walk).
    assert sorted(hard.items())[0] in (
        ("./mnt/data/hard", "./mnt/data/sub/marker"),
        ("./mnt/data/sub/marker", "./mnt/data/hard"),
    ), hard

    newid = new_vmid()
    try:
        upid = n.lxc.create(vmid=newid, ostemplate=volid, restore=1, storage="local")
        task_ok(prox, upid)
        log = "\n".join(r["t"] for r in n.tasks(upid).log.get(limit=500))
        cfg = n.lxc(newid).config.get()
        assert cfg["rootfs"].startswith(f"local:{newid}/"), cfg
        assert cfg["mp0"].startswith(f"local:{newid}/") and "mp=/mnt/data" in cfg["mp0"], cfg
        assert "backup=1" in cfg["mp0"], cfg
        assert cfg["mp1"].startswith(f"local:{newid}/") and "mp=/mnt/skip" in cfg["mp1"], cfg
        assert cfg["mp1"].split(",")[0] != cfg["mp0"].split(",")[0]
        assert "mp1 was not in the backup (backup=0): made again, empty" in log, log
        task_ok(prox, n.lxc(newid).status.start.post())
        assert attach(node, newid, "cat", "/marker").strip() == "root"
        assert attach(node, newid, "cat", "/mnt/data/sub/marker").strip() == "data"
        assert attach(node, newid, "cat", "/mnt/data/hard").strip() == "data"
        assert attach(node, newid, "ls", "-A", "/mnt/skip").strip() == ""
        # The files of the mount point are on its own volume, not on the root's.
        out = attach(node, newid, "sh", "-c", "grep ' /mnt/data ' /proc/mounts | wc -l")
        assert out.strip() == "1", out
    finally:
        destroy_all(prox, [newid])
        task_ok(prox, n.storage("local").content(volid).delete())
