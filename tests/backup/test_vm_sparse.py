"""VM archives store disk images sparse: a mostly empty 1 GiB disk makes an
archive of about its data, uncompressed, and GNU tar, corral's restore onto
dir and btrfs all give back the identical image (checksum), itself sparse."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI

from corral.cluster import archive, keys
from corral.cluster.store import Store
from tests.backup.conftest import NODE, new_vmid, task_ok
from tests.util import Corrald

pytestmark = pytest.mark.timeout(400)
MIB = 1 << 20


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(4 * MIB):
            h.update(data)
    return h.hexdigest()


def _image(store: Store, node: Corrald, vmid: int) -> Path:
    volid = store.get_value(keys.guest(vmid))["config"]["scsi0"].split(",")[0]
    storage, volname = volid.split(":", 1)
    conf = store.get_value(keys.storage(storage))
    path = Path(conf["path"]) / "images" / volname
    if conf["type"] == "btrfs":  # a raw volume is a subvolume holding the image
        return path.with_suffix("") / "disk.raw"
    return path


def test_spool_and_scan_find_the_same_extents(tmp_path: Path) -> None:
    data = bytearray(4 * MIB)
    data[70000:70010] = b"x" * 10  # inside the second 64 KiB piece
    data[3 * MIB : 3 * MIB + 200000] = os.urandom(200000)
    for step in (MIB, 300000):  # writes that align with the pieces, and writes that do not
        path = tmp_path / f"s{step}.raw"
        spool = archive.SparseSpool(str(path))
        for i in range(0, len(data), step):
            spool.write(bytes(data[i : i + step]))
        spool.close()
        assert path.read_bytes() == bytes(data)
        assert spool.extents == archive.scan_extents(str(path))
        assert spool.extents == [(65536, 65536), (3 * MIB, 262144)]
        assert path.stat().st_blocks * 512 <= 512 << 10  # the zeros are holes


def test_mostly_empty_disk_archive_is_sparse_and_restores_identically(
    node: Corrald, prox: ProxmoxAPI, store: Store, btrfs: str, vms: list[int]
) -> None:
    n = prox.nodes(NODE)
    vmid = new_vmid()
    vms.append(vmid)
    task_ok(prox, n.qemu.create(vmid=vmid, name=f"sp{vmid}", memory=64, kvm=0,
                                scsi0="local:1,format=raw", scsi1="local:1,format=qcow2",
                                scsi2="local:0.01,format=raw,backup=0"))  # fmt: skip
    image = _image(store, node, vmid)
    with open(image, "r+b") as fh:  # 5 MiB of data in a 1 GiB disk, at its start and middle
        fh.write(os.urandom(4 * MIB))
        fh.seek(512 * MIB + 12345)
        fh.write(os.urandom(MIB))
    want = _sha(image)
    upid = n.vzdump.post(vmid=vmid, storage="local", mode="stop", compress="0")
    task_ok(prox, upid)
    (row,) = n.storage("local").content.get(content="backup", vmid=vmid)
    path = node.data_dir / "local" / "dump" / row["volid"].split("/", 1)[1]
    size = path.stat().st_size
    print(f"archive of a 1 GiB disk holding 5 MiB, uncompressed: {size / MIB:.1f} MiB")
    assert size < 8 * MIB, size  # a plain tar member took the whole GiB
    log = "\n".join(r["t"] for r in n.tasks(upid).log.get(limit=500))
    assert f"'scsi0': {1 << 30} bytes" in log, log  # read in place
    assert f"'scsi1': {1 << 30} bytes, 0 of them stored" in log, log  # exported (qcow2)
    assert "exclude disk 'scsi2'" in log and "(backup=no)" in log, log
    # GNU tar extracts the image as it was.
    out = node.data_dir / f"sparse-check-{vmid}"
    out.mkdir()
    try:
        subprocess.run(["tar", "-xf", str(path), "-C", str(out)], check=True, timeout=120)
        assert _sha(out / "disk-drive-scsi0.raw") == want
    finally:
        subprocess.run(["rm", "-rf", "--", str(out)], check=True, timeout=60)
    with tarfile.open(path) as tar:
        member = tar.getmember("disk-drive-scsi0.raw")
        assert member.size == 1 << 30 and member.sparse
    # corral's restore, onto dir and onto btrfs: the same image, sparse again.
    for storage in ("local", btrfs):
        newid = new_vmid()
        vms.append(newid)
        task_ok(prox, n.qemu.create(vmid=newid, archive=row["volid"], storage=storage))
        restored = _image(store, node, newid)
        assert restored.stat().st_size == 1 << 30
        assert _sha(restored) == want, storage
        assert restored.stat().st_blocks * 512 < 16 * MIB, (storage, restored.stat())
        cfg = n.qemu(newid).config.get()
        assert "scsi1" in cfg and "scsi2" not in cfg, cfg  # a disk left out is not restored
    task_ok(prox, n.storage("local").content(row["volid"]).delete())
