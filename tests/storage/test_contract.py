"""The storage plugin contract (storage/plugin.py), checked on every real backend.

Each test runs once per backend of `conftest.BACKENDS`; what a backend cannot
hold (zvols on zfs-fuse, container roots on RBD) is skipped with the reason.
VMIDs differ per test, so tests sharing a storage never see each other's volumes.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from typing import Any

import pytest

from corral.cluster.errors import Conflict, CorralError, NotFound, ParamError
from corral.storage.plugin import StorageFull
from tests.storage import blockio
from tests.storage.conftest import Backend, MiB


def _images(b: Backend) -> None:
    if b.image_fmt is None:
        pytest.skip(b.no_images)


def _rootdir(b: Backend) -> None:
    if not b.rootdir:
        pytest.skip(f"{b.name} storage holds no container roots")


def _vmids(b: Backend, vmid: int) -> list[str]:
    return sorted(e["volid"] for e in b.volumes().list_volumes(b.sid, vmid=vmid))


def _root_write(b: Backend, volid: str, name: str, data: bytes) -> None:
    root = b.volumes().mount_rootdir(volid)
    with open(os.path.join(root, name), "wb") as f:
        f.write(data)


def _root_read(b: Backend, volid: str, name: str) -> bytes | None:
    root = b.volumes().mount_rootdir(volid)
    try:
        with open(os.path.join(root, name), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# -- allocation ---------------------------------------------------------------------


def test_alloc_and_free_images(backend: Backend) -> None:
    _images(backend)
    vols = backend.volumes()
    for fmt in backend.formats:
        volid = vols.alloc(backend.sid, 301, size=4 * MiB, fmt=fmt)
        assert vols.parse(volid).fmt == fmt
        assert vols.size(volid) == 4 * MiB
        (row,) = [e for e in vols.list_volumes(backend.sid, vmid=301) if e["volid"] == volid]
        assert row["content"] == "images" and row["format"] == fmt and row["vmid"] == 301
        assert row["size"] == 4 * MiB
        vols.free(volid)
    assert _vmids(backend, 301) == []


def test_alloc_picks_the_next_free_index(backend: Backend) -> None:
    _images(backend)
    vols = backend.volumes()
    first = vols.alloc(backend.sid, 302, size=MiB)
    second = vols.alloc(backend.sid, 302, size=MiB)
    assert "disk-0" in first and "disk-1" in second
    vols.free(first)
    vols.free(second)


def test_alloc_subvol(backend: Backend) -> None:
    _rootdir(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 303, size=64 * MiB, content="rootdir")
    assert vols.parse(volid).fmt == "subvol"
    root = vols.mount_rootdir(volid)
    assert os.path.isdir(root)
    _root_write(backend, volid, "hello", b"world")
    (row,) = vols.list_volumes(backend.sid, vmid=303)
    assert row["content"] == "rootdir" and row["format"] == "subvol"
    vols.unmount_rootdir(volid)
    vols.free(volid)
    assert not os.path.exists(root)
    assert _vmids(backend, 303) == []


def test_free_missing_is_not_found(backend: Backend) -> None:
    vols = backend.volumes()
    name = "304/vm-304-disk-7.raw" if backend.name in ("dir", "btrfs") else "vm-304-disk-7"
    with pytest.raises(NotFound):
        vols.free(f"{backend.sid}:{name}")


def test_list_by_content_and_vmid(backend: Backend) -> None:
    vols = backend.volumes()
    made = []
    if backend.image_fmt:
        made.append(vols.alloc(backend.sid, 305, size=MiB))
        made.append(vols.alloc(backend.sid, 306, size=MiB))
    if backend.rootdir:
        made.append(vols.alloc(backend.sid, 305, size=0, content="rootdir"))
    try:
        listed = {e["volid"] for e in vols.list_volumes(backend.sid)}
        assert set(made) <= listed
        for content in sorted(vols.content_of(backend.sid) & {"images", "rootdir"}):
            rows = vols.list_volumes(backend.sid, content=content, vmid=305)
            assert {e["volid"] for e in rows} == {
                v for v in made if vols.parse(v).vtype == content and "305" in v
            }
            assert all(e["vmid"] == 305 for e in rows)
        assert {e["volid"] for e in vols.list_volumes(backend.sid, vmid=306)} == {
            v for v in made if "-306-" in v
        }
    finally:
        for v in made:
            vols.free(v)


def test_status_has_real_figures(backend: Backend) -> None:
    st = backend.volumes().status(backend.sid)
    assert st["active"] == 1 and st["enabled"] == 1, st
    assert st["total"] > 0 and st["avail"] > 0 and 0 <= st["used"] <= st["total"], st
    assert st["type"] == backend.name


# -- resize --------------------------------------------------------------------------


def test_resize_grows_and_refuses_to_shrink(backend: Backend) -> None:
    _images(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 307, size=2 * MiB, fmt=backend.formats[0])
    try:
        blockio.write(vols, volid, 0x5A)
        vols.resize(volid, 8 * MiB)
        assert vols.size(volid) == 8 * MiB
        assert blockio.holds(vols, volid, 0x5A)
        with pytest.raises(ParamError) as err:
            vols.resize(volid, 4 * MiB)
        assert "size" in err.value.errors
        assert vols.size(volid) == 8 * MiB
    finally:
        vols.free(volid)


# -- snapshots -----------------------------------------------------------------------


def test_snapshot_rollback_restores_image_data(backend: Backend) -> None:
    _images(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 308, size=4 * MiB, fmt=backend.image_fmt)
    try:
        assert vols.has_feature(volid, "snapshot")
        blockio.write(vols, volid, 0x11)
        vols.snapshot(volid, "before")
        assert vols.snapshots(volid) == ["before"]
        with pytest.raises(Conflict):
            vols.snapshot(volid, "before")
        blockio.write(vols, volid, 0x22)
        blockio.write(vols, volid, 0x22, offset=MiB)
        assert blockio.holds(vols, volid, 0x22)
        vols.snapshot_rollback(volid, "before")
        assert blockio.holds(vols, volid, 0x11)
        assert blockio.holds(vols, volid, 0x00, offset=MiB)
        vols.snapshot(volid, "second")
        assert vols.snapshots(volid) == ["before", "second"]
        vols.snapshot_delete(volid, "before")
        assert vols.snapshots(volid) == ["second"]
        with pytest.raises(NotFound):
            vols.snapshot_delete(volid, "before")
        with pytest.raises(NotFound):
            vols.snapshot_rollback(volid, "before")
        assert blockio.holds(vols, volid, 0x11)
    finally:
        vols.free(volid)  # with its remaining snapshot
    assert _vmids(backend, 308) == []


def test_snapshot_rollback_restores_rootdir(backend: Backend) -> None:
    _rootdir(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 309, size=32 * MiB, content="rootdir")
    try:
        if not vols.has_feature(volid, "snapshot"):
            pytest.skip(f"{backend.name} has no snapshots of container roots")
        _root_write(backend, volid, "file", b"old")
        vols.snapshot(volid, "s1")
        _root_write(backend, volid, "file", b"new")
        _root_write(backend, volid, "later", b"x")
        vols.snapshot_rollback(volid, "s1")
        assert _root_read(backend, volid, "file") == b"old"
        assert _root_read(backend, volid, "later") is None
        assert vols.snapshots(volid) == ["s1"]
        vols.snapshot_delete(volid, "s1")
        assert vols.snapshots(volid) == []
    finally:
        vols.free(volid)


def test_bad_snapshot_names_are_refused(backend: Backend) -> None:
    vols = backend.volumes()
    volid = (
        vols.alloc(backend.sid, 310, size=MiB, fmt=backend.image_fmt)
        if backend.image_fmt
        else vols.alloc(backend.sid, 310, size=0, content="rootdir")
    )
    try:
        for bad in ("../x", "-rf", "a b", "", "x@y", "a/b"):
            with pytest.raises(ParamError):
                vols.snapshot(volid, bad)
        with pytest.raises(ParamError):
            backend.plugin.snapshot(backend.cfg, volname=volid.split(":", 1)[1], snap="-x")
    finally:
        vols.free(volid)


# -- clones and copies -----------------------------------------------------------------


def _linked_source(b: Backend, volid: str) -> tuple[str, str | None]:
    """A linked clone's source: a snapshot where the backend clones those, else a base."""
    vols = b.volumes()
    fmt = vols.parse(volid).fmt
    clone = b.plugin.features.get("clone", {})
    if fmt in clone.get("snap", frozenset()):
        vols.snapshot(volid, "s")
        return volid, "s"
    if fmt not in clone.get("base", frozenset()):
        vols.free(volid)
        pytest.skip(f"{b.name} has no linked clones of {fmt} volumes")
    base = vols.create_base(volid)
    assert vols.has_feature(base, "clone")
    return base, None


def test_linked_clone_sees_the_data(backend: Backend) -> None:
    _images(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 311, size=4 * MiB, fmt=backend.image_fmt)
    src, snap = _linked_source(backend, volid)
    clone = ""
    try:
        blockio.write(vols, src, 0x33) if snap else None  # after the snap: not in the clone
        clone = vols.clone(src, 312, snap=snap)
        assert vols.parse(clone).vmid == 312
        assert clone in {e["volid"] for e in vols.list_volumes(backend.sid, vmid=312)}
        if snap:
            assert blockio.holds(vols, clone, 0x00)
        blockio.write(vols, clone, 0x44)
        assert blockio.holds(vols, clone, 0x44)
        assert not blockio.holds(vols, src, 0x44)  # the source never changes with its clone
    finally:
        if clone:
            vols.free(clone)
        if snap:
            vols.snapshot_delete(src, snap)
        vols.free(src)
    assert _vmids(backend, 311) == [] and _vmids(backend, 312) == []


def test_linked_clone_of_rootdir(backend: Backend) -> None:
    _rootdir(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 313, size=16 * MiB, content="rootdir")
    _root_write(backend, volid, "etc-hostname", b"ct313")
    src, snap = _linked_source(backend, volid)
    clone = ""
    try:
        clone = vols.clone(src, 314, snap=snap)
        assert _root_read(backend, clone, "etc-hostname") == b"ct313"
        _root_write(backend, clone, "etc-hostname", b"ct314")
        assert _root_read(backend, src, "etc-hostname") == b"ct313"
    finally:
        if clone:
            vols.free(clone)
        if snap:
            vols.snapshot_delete(src, snap)
        vols.free(src)


def test_full_copy_is_independent(backend: Backend) -> None:
    vols = backend.volumes()
    if backend.image_fmt:
        volid = vols.alloc(backend.sid, 315, size=4 * MiB, fmt=backend.image_fmt)
        blockio.write(vols, volid, 0x55)
    else:
        volid = vols.alloc(backend.sid, 315, size=16 * MiB, content="rootdir")
        _root_write(backend, volid, "data", b"copied")
    copy = ""
    try:
        copy = vols.clone(volid, 316, full=True)
        assert vols.parse(copy).vmid == 316
        if backend.image_fmt:
            assert vols.size(copy) == 4 * MiB
            assert blockio.holds(vols, copy, 0x55)
            blockio.write(vols, volid, 0x66)
            assert blockio.holds(vols, copy, 0x55)
        else:
            assert _root_read(backend, copy, "data") == b"copied"
            _root_write(backend, volid, "data", b"changed")
            assert _root_read(backend, copy, "data") == b"copied"
        vols.free(volid)
        volid = ""
        if backend.image_fmt:
            assert blockio.holds(vols, copy, 0x55)  # the copy outlives its source
    finally:
        for v in (copy, volid):
            if v:
                vols.free(v)


def test_full_copy_of_rootdir(backend: Backend) -> None:
    _rootdir(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 317, size=16 * MiB, content="rootdir")
    os.makedirs(os.path.join(vols.mount_rootdir(volid), "etc"))
    _root_write(backend, volid, "etc/passwd", b"root:x:0:0")
    os.chmod(os.path.join(vols.mount_rootdir(volid), "etc/passwd"), 0o600)
    copy = ""
    try:
        copy = vols.clone(volid, 318, full=True)
        assert _root_read(backend, copy, "etc/passwd") == b"root:x:0:0"
        mode = os.stat(os.path.join(vols.mount_rootdir(copy), "etc/passwd")).st_mode
        assert mode & 0o777 == 0o600
    finally:
        for v in (copy, volid):
            if v:
                vols.free(v)


# -- streams -------------------------------------------------------------------------


def test_export_import_round_trip_image(backend: Backend) -> None:
    _images(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 319, size=2 * MiB, fmt="raw")
    new = ""
    try:
        blockio.write(vols, volid, 0x77, offset=MiB)
        assert "raw" in vols.export_formats(volid)
        buf = io.BytesIO()
        vols.export(volid, fmt="raw", out=buf)
        assert len(buf.getvalue()) == 2 * MiB
        assert buf.getvalue()[MiB : MiB + 16] == b"\x77" * 16
        buf.seek(0)
        new = vols.import_(backend.sid, stream=buf, fmt="raw", vmid=320, size=2 * MiB)
        assert vols.parse(new).vmid == 320
        assert vols.size(new) == 2 * MiB
        assert blockio.holds(vols, new, 0x77, offset=MiB)
        assert blockio.holds(vols, new, 0x00)
    finally:
        for v in (new, volid):
            if v:
                vols.free(v)


def test_export_import_round_trip_rootdir(backend: Backend) -> None:
    _rootdir(backend)
    vols = backend.volumes()
    volid = vols.alloc(backend.sid, 321, size=16 * MiB, content="rootdir")
    new = ""
    try:
        _root_write(backend, volid, "motd", b"exported")
        buf = io.BytesIO()
        vols.export(volid, fmt="tar", out=buf)
        with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
            assert "./motd" in tar.getnames()
        buf.seek(0)
        new = vols.import_(backend.sid, stream=buf, fmt="tar", vmid=322, content="rootdir")
        assert _root_read(backend, new, "motd") == b"exported"
    finally:
        for v in (new, volid):
            if v:
                vols.free(v)


def test_import_of_garbage_leaves_nothing(backend: Backend) -> None:
    vols = backend.volumes()
    fmt = "tar" if backend.rootdir else "raw"
    content = "rootdir" if backend.rootdir else "images"
    if fmt == "raw":
        pytest.skip("any byte stream is a valid raw image")
    with pytest.raises((CorralError, tarfile.TarError, OSError)):
        vols.import_(
            backend.sid, stream=io.BytesIO(b"not a tar" * 100), fmt=fmt, vmid=323, content=content
        )
    assert _vmids(backend, 323) == []


# -- refusals ------------------------------------------------------------------------


def test_bad_names_are_param_errors(backend: Backend) -> None:
    vols = backend.volumes()
    plugin, cfg = backend.plugin, backend.cfg
    content = "images" if backend.image_fmt else "rootdir"
    fmt = backend.image_fmt or "subvol"
    ext = "" if backend.name in ("rbd", "zfspool") else f".{fmt}"
    prefix = "vm" if content == "images" else "subvol"
    for name in (
        f"../{prefix}-324-disk-0{ext}",
        f"-{prefix}-324-disk-0{ext}",
        f"{prefix}-999-disk-0{ext}",
        "disk-0",
        f"{prefix}-324-disk-0{ext}/..",
    ):
        with pytest.raises(ParamError) as err:
            vols.alloc(backend.sid, 324, size=MiB, content=content, name=name)
        assert "name" in err.value.errors, err.value.errors
    for volname in (
        "../../etc/passwd",
        "-rf",
        "324/../../x.raw",
        "vm-324-disk-0/../../x",
        "/etc/passwd",
    ):
        with pytest.raises(ParamError):
            vols.free(f"{backend.sid}:{volname}")
        with pytest.raises(ParamError):
            plugin.parse_volname(cfg, volname=volname)
    assert _vmids(backend, 324) == []


def test_wrong_content_type_is_refused(backend: Backend) -> None:
    vols = backend.volumes()
    for content in ("iso", "bogus"):
        with pytest.raises(ParamError) as err:
            vols.alloc(backend.sid, 325, size=MiB, content=content)
        assert "content" in err.value.errors
    with pytest.raises(ParamError):
        backend.plugin.alloc(backend.cfg, vmid=325, size=MiB, content="vztmpl")
    if not backend.rootdir:
        with pytest.raises(ParamError):
            vols.alloc(backend.sid, 325, size=MiB, content="rootdir")
    assert _vmids(backend, 325) == []


def _no_files(folder: str) -> bool:
    return not os.path.exists(folder)  # not even the empty VMID folder


def test_disk_full_leaves_nothing_behind(backend: Backend) -> None:
    if backend.full is None:
        pytest.skip(backend.no_full)
    sid, cfg, too_big = backend.full
    vols = backend.volumes()
    before = vols.list_volumes(sid)
    with pytest.raises(StorageFull):
        vols.alloc(sid, 326, size=too_big)
    assert vols.list_volumes(sid) == before
    assert _no_files(os.path.join(cfg["path"], "images", "326"))
    # A stream larger than the storage: refused as full, the half-written volume removed.
    stream = io.BytesIO(b"\x01" * (too_big // 2))
    with pytest.raises(StorageFull):
        vols.import_(sid, stream=stream, fmt="raw", vmid=327)
    assert vols.list_volumes(sid) == before
    assert _no_files(os.path.join(cfg["path"], "images", "327"))
    volid = vols.alloc(sid, 328, size=MiB)  # and the storage still works afterwards
    vols.free(volid)


def test_concurrent_alloc_of_one_name_one_wins(backend: Backend) -> None:
    vols = backend.volumes()
    if backend.image_fmt:
        content, fmt = "images", backend.formats[0]
        name = "vm-329-disk-5" + ("" if backend.name in ("rbd", "zfspool") else f".{fmt}")
    else:
        content, fmt, name = "rootdir", "subvol", "subvol-329-disk-5"
    results: list[object] = []
    barrier = threading.Barrier(2)

    def attempt() -> None:
        barrier.wait()
        try:
            results.append(
                vols.alloc(backend.sid, 329, size=MiB, fmt=fmt, content=content, name=name)
            )
        except Exception as exc:  # noqa: BLE001 - collected and checked below
            results.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [r for r in results if isinstance(r, str)]
    lost = [r for r in results if not isinstance(r, str)]
    try:
        assert len(won) == 1 and len(lost) == 1, results
        assert isinstance(lost[0], Conflict), lost
        assert _vmids(backend, 329) == won
    finally:
        for v in won:
            vols.free(v)


def test_import_of_a_tar_that_escapes_is_refused(backend: Backend, tmp_path: Any) -> None:
    _rootdir(backend)
    vols = backend.volumes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in (("ok", tarfile.REGTYPE), ("link", tarfile.SYMTYPE),
                           ("link/escaped", tarfile.REGTYPE)):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = str(tmp_path)  # outside the root: writing through it escapes
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    buf.seek(0)
    with pytest.raises(ParamError):
        vols.import_(backend.sid, stream=buf, fmt="tar", vmid=330, content="rootdir")
    assert not os.path.exists(tmp_path / "escaped")
    assert _vmids(backend, 330) == []
