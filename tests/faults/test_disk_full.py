"""A full disk during a CT create: a small tmpfs-backed dir storage that cannot
hold the unpacked template. The create fails with a clear message (a 507 or a
failed task) and leaves nothing: no record, no lock, no volume, no lxc dir."""

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
    if r.status_code == 200:
        upid = r.json()["data"]
        st = s.wait_task(upid)
        assert st["exitstatus"] != "OK"
        text = log_text(s, upid)
        assert "No space left on device" in text or "space" in st["exitstatus"], text
        message = st["exitstatus"]
    else:
        assert r.status_code == 507, r.text
        message = r.text
    print("disk full:", message)
    guest_gone(node, s, vmid, tiny)
    assert_clean(node, s)
    # What was written is gone: the storage holds its empty folders only.
    assert [p for p in tiny.rglob("*") if p.is_file()] == []
    s.data("DELETE", "/storage/tiny")
