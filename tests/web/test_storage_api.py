"""The storage API through a real corrald: configuration in etcd, a node's status,
content allocation, snapshots/clones/resize, upload with checksums, bad input.

Backend behaviour in depth is the contract suite's (tests/storage); this is the
HTTP surface on the `dir` type, whose figures and files the test can check.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from corral.cluster import keys, peer
from corral.cluster.errors import NotFound
from corral.cluster.store import Store
from tests.util import ApiSession, Corrald, wait_for

NODE = "node1"


@pytest.fixture(scope="module")
def api(corrald: Corrald) -> ApiSession:
    return corrald.session()


@pytest.fixture
def dirstore(api: ApiSession, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A dir storage of the test's own."""
    sid = f"crlsa{os.getpid() % 1000}{abs(hash(tmp_path.name)) % 1000}"
    path = tmp_path / "store"
    api.data("POST", "/storage", data={"storage": sid, "type": "dir", "path": str(path)})
    yield sid, path
    api.delete(f"/storage/{sid}")


def content(sid: str, volid: str = "") -> str:
    base = f"/nodes/{NODE}/storage/{sid}/content"
    return f"{base}/{quote(volid, safe='')}" if volid else base


def qemu_io(path: str, cmd: str) -> str:
    proc = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", cmd, path], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_local_storage_exists_with_real_figures(api: ApiSession, corrald: Corrald) -> None:
    cfg = api.data("GET", "/storage/local")
    assert cfg["type"] == "dir" and cfg["path"] == str(corrald.data_dir / "local")
    rows = {r["storage"]: r for r in api.data("GET", f"/nodes/{NODE}/storage")}
    local = rows["local"]
    st = os.statvfs(corrald.data_dir)
    assert local["active"] == 1 and local["enabled"] == 1
    assert local["total"] == st.f_blocks * st.f_frsize
    assert 0 < local["used"] < local["total"]
    assert "vztmpl" in local["content"].split(",")
    status = api.data("GET", f"/nodes/{NODE}/storage/local/status")
    assert status["total"] == local["total"]


def test_config_create_update_delete(api: ApiSession, tmp_path: Path) -> None:
    path = tmp_path / "s"
    sid = "crlsacfg"
    api.data("POST", "/storage", data={"storage": sid, "type": "dir", "path": str(path),
                                       "content": "images,iso"})  # fmt: skip
    try:
        assert (path / "images").is_dir() and (path / "template" / "iso").is_dir()
        again = api.post("/storage", data={"storage": sid, "type": "dir", "path": str(path)})
        assert again.status_code == 409
        cfg = api.data("GET", f"/storage/{sid}")
        assert cfg["content"] == "images,iso"
        api.data("PUT", f"/storage/{sid}", data={"content": "images", "digest": cfg["digest"]})
        assert api.data("GET", f"/storage/{sid}")["content"] == "images"
        stale = api.put(f"/storage/{sid}", data={"content": "iso", "digest": cfg["digest"]})
        assert stale.status_code == 409
        fixed = api.put(f"/storage/{sid}", data={"path": "/elsewhere"})
        assert fixed.status_code == 400 and "path" in fixed.json()["errors"]
        assert any(s["storage"] == sid for s in api.data("GET", "/storage", params={"type": "dir"}))
    finally:
        assert api.delete(f"/storage/{sid}").status_code == 200
    assert api.get(f"/storage/{sid}").status_code == 404


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"storage": "x1", "type": "nosuch", "path": "/tmp/x"}, "type"),
        ({"storage": "x1", "type": "dir", "path": "/tmp/x", "bogus": "1"}, "bogus"),
        ({"storage": "x1", "type": "dir", "path": "relative/dir"}, "path"),
        (
            {"storage": "x1", "type": "dir", "path": "/tmp/x", "content": "images,nonsense"},
            "content",
        ),  # fmt: skip
        ({"storage": "-x", "type": "dir", "path": "/tmp/x"}, "storage"),
        ({"storage": "x1", "type": "dir"}, "path"),
    ],
)
def test_bad_storage_config_is_a_400_naming_it(
    api: ApiSession, params: dict[str, str], bad: str
) -> None:
    r = api.post("/storage", data=params)
    assert r.status_code == 400, r.text
    assert bad in r.json()["errors"], r.text
    assert api.get("/storage/x1").status_code == 404


def test_unknown_storage_is_404(api: ApiSession) -> None:
    for path in (f"/nodes/{NODE}/storage/nosuch/status", content("nosuch"), "/storage/nosuch"):
        assert api.get(path).status_code == 404, path


def test_allocate_snapshot_rollback_clone_resize_free(
    api: ApiSession, dirstore: tuple[str, Path]
) -> None:
    sid, root = dirstore
    volid = api.data(
        "POST", content(sid), data={"vmid": 100, "filename": "vm-100-disk-0.qcow2", "size": "64M"}
    )
    assert volid == f"{sid}:100/vm-100-disk-0.qcow2"
    path = str(root / "images" / "100" / "vm-100-disk-0.qcow2")
    info = api.data("GET", content(sid, volid))
    assert info["size"] == 64 << 20 and info["format"] == "qcow2" and info["path"] == path
    listed = api.data("GET", content(sid), params={"vmid": 100})
    assert [r["volid"] for r in listed] == [volid]

    qemu_io(path, "write -P 0xaa 0 1M")
    api.data("POST", f"{content(sid, volid)}/snapshot", data={"snapname": "before"})
    qemu_io(path, "write -P 0xbb 0 1M")
    assert [s["name"] for s in api.data("GET", f"{content(sid, volid)}/snapshot")] == ["before"]
    api.data("POST", f"{content(sid, volid)}/snapshot/before/rollback")
    out = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0xaa 0 1M", path],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Pattern verification failed" not in out.stdout + out.stderr
    api.data("DELETE", f"{content(sid, volid)}/snapshot/before")
    assert api.data("GET", f"{content(sid, volid)}/snapshot") == []

    api.data("PUT", content(sid, volid), data={"size": "+64M"})
    assert api.data("GET", content(sid, volid))["size"] == 128 << 20
    shrink = api.put(content(sid, volid), data={"size": "32M"})
    assert shrink.status_code == 400 and "size" in shrink.json()["errors"]

    full = api.data("POST", f"{content(sid, volid)}/clone", data={"vmid": 101, "full": 1})
    assert full.startswith(f"{sid}:101/vm-101-disk-0")
    base = api.data("POST", f"{content(sid, volid)}/base")
    assert base == f"{sid}:100/base-100-disk-0.qcow2"
    linked = api.data("POST", f"{content(sid, base)}/clone", data={"vmid": 102})
    assert linked == f"{sid}:100/base-100-disk-0.qcow2/102/vm-102-disk-0.qcow2"
    clone_path = str(root / "images" / "102" / "vm-102-disk-0.qcow2")
    out = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -P 0xaa 0 1M", clone_path],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0 and "failed" not in out.stdout + out.stderr
    # The base is in use by its clone: freeing it must fail and lose nothing.
    r = api.delete(content(sid, base))
    if r.status_code == 200:
        st = api.wait_task(r.json()["data"])
        assert st["exitstatus"] != "OK"
    else:
        assert r.status_code == 409
    assert os.path.exists(root / "images" / "100" / "base-100-disk-0.qcow2")

    for v in (linked, full, base):
        api.run_task("DELETE", content(sid, v))
    assert api.data("GET", content(sid), params={"content": "images"}) == []
    assert not (root / "images" / "100").exists()


@pytest.mark.parametrize(
    "volume",
    [
        "../../etc/passwd",
        "iso/../../x.iso",
        "100/../../../etc/shadow",
        "iso/-rf.iso",
        "100/vm-101-disk-0.raw",
    ],  # fmt: skip
)
def test_traversal_and_foreign_names_are_400(
    api: ApiSession, dirstore: tuple[str, Path], volume: str
) -> None:
    sid, _ = dirstore
    r = api.get(content(sid, f"{sid}:{volume}"))
    assert r.status_code == 400, r.text
    assert "volume" in r.json()["errors"]
    r = api.delete(content(sid, f"{sid}:{volume}"))
    assert r.status_code == 400, r.text


def test_bad_allocations(api: ApiSession, dirstore: tuple[str, Path], tmp_path: Path) -> None:
    sid, root = dirstore
    for data, bad in [
        ({"vmid": 100, "filename": "../vm-100-disk-0.raw", "size": "1M"}, "name"),
        ({"vmid": 100, "filename": "vm-101-disk-0.raw", "size": "1M"}, "name"),
        ({"vmid": 100, "filename": "vm-100-disk-0.raw", "size": "lots"}, "size"),
        (
            {"vmid": 100, "filename": "vm-100-disk-0.raw", "size": "1M", "format": "qcow2"},
            "format",
        ),  # fmt: skip
    ]:
        r = api.post(content(sid), data=data)
        assert r.status_code == 400, (data, r.text)
        assert bad in r.json()["errors"], (data, r.text)
    # A storage for images only refuses a container root (wrong content type).
    api.data("PUT", f"/storage/{sid}", data={"content": "images"})
    r = api.post(content(sid), data={"vmid": 100, "filename": "subvol-100-disk-0.subvol",
                                     "size": "1M"})  # fmt: skip
    assert r.status_code == 400 and "content" in r.json()["errors"], r.text
    assert not os.listdir(root / "images")


def test_concurrent_allocations_of_one_name_exactly_one_wins(
    api: ApiSession, dirstore: tuple[str, Path]
) -> None:
    sid, _ = dirstore
    codes: list[int] = []

    def alloc() -> None:
        r = api.post(content(sid), data={"vmid": 300, "filename": "vm-300-disk-0.raw",
                                         "size": "4M"})  # fmt: skip
        codes.append(r.status_code)

    threads = [threading.Thread(target=alloc) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * 5, codes


def test_disk_full_is_a_clear_error_and_leaves_nothing(api: ApiSession, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "crlsatiny", str(mnt)], check=True,
                   timeout=30)  # fmt: skip
    sid = "crlsafull"
    try:
        api.data("POST", "/storage", data={"storage": sid, "type": "dir", "path": str(mnt),
                                           "preallocation": "full"})  # fmt: skip
        r = api.post(content(sid), data={"vmid": 400, "filename": "vm-400-disk-0.raw",
                                         "size": "64M"})  # fmt: skip
        assert r.status_code == 507, r.text
        assert "space" in r.json()["message"]
        assert not (mnt / "images" / "400").exists() or not os.listdir(mnt / "images" / "400")
        assert api.data("GET", content(sid), params={"content": "images"}) == []
    finally:
        api.delete(f"/storage/{sid}")
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)


def _upload(api: ApiSession, sid: str, name: str, body: bytes, **fields: str) -> Any:
    return api.post(
        f"/nodes/{NODE}/storage/{sid}/upload",
        data={"content": "iso", **fields},
        files={"filename": (name, body, "application/octet-stream")},
    )


def test_upload_with_checksum(api: ApiSession, dirstore: tuple[str, Path]) -> None:
    sid, root = dirstore
    body = os.urandom(3 << 20)
    good = hashlib.sha256(body).hexdigest()
    r = _upload(api, sid, "tiny.iso", body, checksum=good, **{"checksum-algorithm": "sha256"})
    assert r.status_code == 200, r.text
    st = api.wait_task(r.json()["data"])
    assert st["exitstatus"] == "OK"
    assert (root / "template" / "iso" / "tiny.iso").read_bytes() == body
    listed = api.data("GET", content(sid), params={"content": "iso"})
    assert [(v["volid"], v["size"]) for v in listed] == [(f"{sid}:iso/tiny.iso", len(body))]

    bad = _upload(api, sid, "other.iso", body, checksum="0" * 64,
                  **{"checksum-algorithm": "sha256"})  # fmt: skip
    assert bad.status_code == 400 and "checksum" in bad.json()["errors"], bad.text
    again = _upload(api, sid, "tiny.iso", body)
    assert again.status_code == 409
    evil = _upload(api, sid, "..", body)
    assert evil.status_code == 400, evil.text
    # Nothing staged is left behind by the refused uploads.
    leftovers = [p for p in (root / "template").rglob("*") if p.name.startswith(".upload-")]
    assert leftovers == [] and not (root / "template" / "iso" / "other.iso").exists()


def test_storage_in_use_cannot_be_removed(
    api: ApiSession, corrald: Corrald, dirstore: tuple[str, Path]
) -> None:
    sid, _ = dirstore
    volid = api.data(
        "POST", content(sid), data={"vmid": 500, "filename": "vm-500-disk-0.raw", "size": "1M"}
    )
    store = Store([f"http://127.0.0.1:{corrald.etcd_port}"])
    try:
        store.put(keys.guest(500), {"vmid": 500, "type": "qemu", "node": NODE,
                                    "config": {"scsi0": f"{volid},size=1M"}})  # fmt: skip
        r = api.delete(f"/storage/{sid}")
        assert r.status_code == 409 and "500" in r.json()["message"]
        r = api.delete(content(sid, volid))
        assert r.status_code == 409
    finally:
        store.delete(keys.guest(500))
        store.close()
    api.run_task("DELETE", content(sid, volid))


def test_cluster_resources_list_storage(api: ApiSession) -> None:
    def row() -> Any:
        rows = api.data("GET", "/cluster/resources", params={"type": "storage"})
        return next((r for r in rows if r["id"] == f"storage/{NODE}/local"), None)

    found = wait_for(row, 15, 0.2, "storage row")
    assert found["status"] == "available" and found["maxdisk"] > 0 and found["plugintype"] == "dir"


def test_node_to_node_calls_stream_verify_and_name_the_node(
    api: ApiSession, corrald: Corrald, dirstore: tuple[str, Path]
) -> None:
    """cluster.peer over the one client: a streamed (chunked) volume import as root,
    verified against the cluster CA, and errors that name the node."""
    sid, root = dirstore
    store = Store([f"http://127.0.0.1:{corrald.etcd_port}"])
    data = os.urandom(3 << 20)
    try:
        volid = peer.call(store, str(corrald.data_dir), NODE, "POST",
                          f"/nodes/{NODE}/storage/{sid}/import",
                          params={"vmid": 501, "format": "raw", "content": "images"},
                          body=io.BytesIO(data))  # fmt: skip
        assert volid.startswith(f"{sid}:501/")
        path = root / "images" / volid.split(":", 1)[1]
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
        with pytest.raises(peer.PeerError) as err:
            peer.call(store, str(corrald.data_dir), NODE, "POST",
                      f"/nodes/{NODE}/storage/{sid}/import", params={"vmid": 7, "format": "x"},
                      body=io.BytesIO(b""))  # fmt: skip
        assert err.value.status == 400 and f"node '{NODE}'" in str(err.value)
        assert "vmid" in str(err.value) and "format" in str(err.value)
        with pytest.raises(NotFound):
            peer.call(store, str(corrald.data_dir), "nosuchnode", "GET", "/version")
        upid = peer.call(store, str(corrald.data_dir), NODE, "DELETE", content(sid, volid))
        assert api.wait_task(upid)["exitstatus"] == "OK"
        assert not path.exists()
    finally:
        store.close()
