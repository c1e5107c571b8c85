"""The issue's check through the HTTP API of a real corrald, on every backend here:
allocate, write, snapshot, overwrite, roll back (the data written before the
snapshot is back), clone (linked where the backend can, and full), resize, free.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.storage.conftest import Backend
from tests.util import ApiSession, Corrald

NODE = "node1"


@pytest.fixture
def api(corrald: Corrald, backend: Backend) -> Iterator[tuple[ApiSession, str]]:
    s = corrald.session()
    sid = f"{backend.sid}api"
    if s.get(f"/storage/{sid}").status_code == 404:
        s.data("POST", "/storage", data={"storage": sid, **backend.cfg})
    yield s, sid


def content(sid: str, volid: str = "", sub: str = "") -> str:
    base = f"/nodes/{NODE}/storage/{sid}/content"
    if volid:
        base += "/" + quote(volid, safe="")
    return base + sub


def qemu_target(backend: Backend, info: dict[str, Any]) -> list[str]:
    """qemu-io arguments reaching the volume: its file, or librbd."""
    path = info["path"]
    if path.startswith("rbd:"):
        return ["-f", "raw", f"{path}:conf={backend.cfg['conf']}:id=admin"]
    return ["-f", info["format"], path]


def qemu_io(target: list[str], cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", *target, "-c", cmd], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def holds(target: list[str], pattern: str) -> bool:
    out = qemu_io(target, f"read -P {pattern} 0 1M")
    return out.returncode == 0 and "Pattern verification failed" not in out.stdout + out.stderr


def test_allocate_snapshot_rollback_clone_resize_free(
    api: tuple[ApiSession, str], backend: Backend
) -> None:
    if backend.image_fmt is None:
        pytest.skip(backend.no_images)
    s, sid = api
    fmt = backend.image_fmt
    suffix = "" if backend.cfg["type"] == "rbd" else f".{fmt}"
    name = f"vm-150-disk-0{suffix}"
    volid = s.data("POST", content(sid), data={"vmid": 150, "filename": name, "size": "64M"})
    made = [volid]
    try:
        info = s.data("GET", content(sid, volid))
        assert info["size"] == 64 << 20
        target = qemu_target(backend, info)
        assert qemu_io(target, "write -P 0xaa 0 1M").returncode == 0

        s.data("POST", content(sid, volid, "/snapshot"), data={"snapname": "before"})
        assert qemu_io(target, "write -P 0xbb 0 1M").returncode == 0
        assert holds(target, "0xbb")
        s.data("POST", content(sid, volid, "/snapshot/before/rollback"))
        assert holds(target, "0xaa"), "rollback did not restore the data of the snapshot"

        full = s.data("POST", content(sid, volid, "/clone"), data={"vmid": 151, "full": 1})
        made.append(full)
        assert holds(qemu_target(backend, s.data("GET", content(sid, full))), "0xaa")
        # A linked clone from the snapshot, where the backend declares it can.
        linked = s.post(content(sid, volid, "/clone"), data={"vmid": 152, "snapname": "before"})
        if fmt in backend.plugin.features.get("clone", {}).get("snap", frozenset()):
            assert linked.status_code == 200, linked.text
            made.append(linked.json()["data"])
            assert holds(qemu_target(backend, s.data("GET", content(sid, made[-1]))), "0xaa")
        else:
            assert linked.status_code == 501, linked.text  # "not supported", said clearly

        s.data("PUT", content(sid, volid), data={"size": "+32M"})
        assert s.data("GET", content(sid, volid))["size"] == 96 << 20
        listed = {v["volid"] for v in s.data("GET", content(sid), params={"content": "images"})}
        assert set(made) <= listed
    finally:
        for v in reversed(made):
            r = s.delete(content(sid, v), params={"delay": 30})
            assert r.status_code == 200, r.text
            if r.json()["data"]:
                s.wait_task(r.json()["data"])
    remaining = {v["volid"] for v in s.data("GET", content(sid), params={"content": "images"})}
    assert not remaining & set(made)


def test_node_storage_shows_real_usage(api: tuple[ApiSession, str], backend: Backend) -> None:
    s, sid = api
    row = next(r for r in s.data("GET", f"/nodes/{NODE}/storage") if r["storage"] == sid)
    assert row["active"] == 1 and row["total"] > 0 and row["avail"] > 0
    assert row["type"] == backend.cfg["type"]
