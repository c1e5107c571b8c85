"""A full disk: a small tmpfs-backed dir storage. A CT create that cannot hold
the unpacked template fails with a task error naming the storage and the volume,
and leaves nothing: no record, no lock, no volume, no lxc dir. An upload that
does not fit is answered at once with 507 naming the storage (not a 500), and
leaves no staged file."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import install_template
from tests.faults.world import NODE, assert_clean, guest_gone, log_text, start
from tests.util import Corrald

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: room for the storage's folders, not for a root filesystem."""
    path = tmp_path / "tiny"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "crl-faults-tiny", str(path)],
        check=True, timeout=30,
    )  # fmt: skip
    yield path
    subprocess.run(["umount", "-l", str(path)], timeout=30)


def test_disk_full_during_create_leaves_nothing(node: Corrald, tiny: Path, vmid: int) -> None:
    start(node)
    template = install_template(node)
    s = node.session()
    s.data(
        "POST", "/storage",
        data={"storage": "tiny", "type": "dir", "path": str(tiny), "content": "rootdir"},
    )  # fmt: skip
    r = s.post(
        f"/nodes/{NODE}/lxc", data={"vmid": vmid, "ostemplate": template, "rootfs": "tiny:1"}
    )
    assert r.status_code == 200, r.text
    upid = r.json()["data"]
    st = s.wait_task(upid)
    # The task's error names the storage and the volume that filled up.
    message = st["exitstatus"]
    assert message.startswith(f"not enough space on storage 'tiny' for tiny:{vmid}/subvol-"), st
    assert "No space left on device" in message
    assert message in log_text(s, upid)
    print("disk full:", message)
    guest_gone(node, s, vmid, tiny)
    assert_clean(node, s)
    # What was written is gone: the storage holds its empty folders only.
    assert [p for p in tiny.rglob("*") if p.is_file()] == []
    s.data("DELETE", "/storage/tiny")


def test_disk_full_during_an_upload_is_a_507_naming_the_storage(node: Corrald, tiny: Path) -> None:
    start(node)
    s = node.session()
    s.data("POST", "/storage", data={"storage": "tiny", "type": "dir", "path": str(tiny),
                                     "content": "iso"})  # fmt: skip
    r = s.post(
        f"/nodes/{NODE}/storage/tiny/upload",
        data={"content": "iso"},
        files={"filename": ("big.iso", b"\0" * (2 << 20))},
        timeout=60,
    )
    assert r.status_code == 507, (r.status_code, r.text)
    message = r.json()["message"]
    assert message.startswith("not enough space on storage 'tiny' for the uploaded file"), message
    assert [p for p in tiny.rglob("*") if p.is_file()] == []  # nothing staged is left
    assert s.data("GET", f"/nodes/{NODE}/storage/tiny/content") == []
    s.data("DELETE", "/storage/tiny")
