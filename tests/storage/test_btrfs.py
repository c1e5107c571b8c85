"""btrfs specifics on a real loop-mounted btrfs: qgroup quotas, bases, no leftovers."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster.errors import Conflict
from corral.storage.volumes import Volumes
from tests.storage import loopfs

MiB = 1 << 20


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("crlst-btrfs-q")
    with loopfs.loop_fs(str(base / "fs.img"), str(base / "mnt"), size=200 * MiB,
                        mkfs=["mkfs.btrfs", "-q", "-f"]) as mnt:  # fmt: skip
        subprocess.run(["btrfs", "quota", "enable", mnt], check=True, capture_output=True,
                       timeout=60)  # fmt: skip
        yield mnt


def _vols(mnt: str, **extra: object) -> Volumes:
    cfg = {"type": "btrfs", "path": os.path.join(mnt, "store"), **extra}
    return Volumes(lambda: {"crlstq": cfg}, node="n1")


def test_quota_limits_a_container_root(btrfs: str) -> None:
    vols = _vols(btrfs, quotas=1)
    volid = vols.alloc("crlstq", 370, size=2 * MiB, content="rootdir")
    try:
        root = vols.mount_rootdir(volid)
        with pytest.raises(OSError) as err:
            with open(os.path.join(root, "big"), "wb") as f:
                for _ in range(8):
                    f.write(b"\xff" * MiB)
                    f.flush()
                    os.fsync(f.fileno())
        assert err.value.errno in (errno.EDQUOT, errno.ENOSPC)
    finally:
        vols.free(volid)


def test_rollback_and_base_leave_no_temporaries(btrfs: str) -> None:
    vols = _vols(btrfs)
    volid = vols.alloc("crlstq", 371, size=MiB)
    vols.snapshot(volid, "s1")
    vols.snapshot_rollback(volid, "s1")
    folder = Path(btrfs, "store", "images", "371")
    assert sorted(p.name for p in folder.iterdir()) == ["vm-371-disk-0", "vm-371-disk-0@s1"]
    with pytest.raises(Conflict):
        vols.create_base(volid)  # snapshots first
    vols.snapshot_delete(volid, "s1")
    base = vols.create_base(volid)
    assert base == "crlstq:371/base-371-disk-0.raw"
    with pytest.raises(OSError):  # a base is read-only: its clones' data never changes
        open(vols.file_path(base), "r+b").close()
    clone = vols.clone(base, 372)
    assert vols.parse(clone).vmid == 372
    vols.free(base)  # btrfs clones share extents, not a dependency: the base can go
    assert vols.size(clone) == MiB
    vols.free(clone)
    assert not folder.exists()


def test_rename_noreplace_never_replaces_an_empty_directory(btrfs: str) -> None:
    from corral.storage.btrfs import rename_noreplace

    src, dst = Path(btrfs, "crlst-src"), Path(btrfs, "crlst-dst")
    src.mkdir()
    dst.mkdir()  # os.rename would silently replace it
    try:
        with pytest.raises(FileExistsError):
            rename_noreplace(str(src), str(dst))
        assert src.is_dir()
        dst.rmdir()
        rename_noreplace(str(src), str(dst))
        assert dst.is_dir() and not src.exists()
    finally:
        for p in (src, dst):
            if p.exists():
                p.rmdir()
