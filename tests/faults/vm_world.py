"""A corrald that runs VMs (TCG) through a private libvirtd the test may kill
(tests/faults/libvirtd.py), or through its own `qemu:///embed` root; and the
invariants of a VM fault checked through the API and against the world: QEMU
processes in /proc, libvirt's domain list, the storage dir, etcd."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.faults.libvirtd import PrivateLibvirtd
from tests.faults.world import NODE, assert_clean, start, store
from tests.kvm.conftest import kill_qemus_under, qemu_pids, short_tmp, virsh_cleanup
from tests.nodes import install_guest_files
from tests.util import ApiSession, Corrald, wait_for


class VmWorld:
    def __init__(self, base: Path, guest_files: dict[str, str], *, embed: bool) -> None:
        self.base = base
        self.libvirtd = PrivateLibvirtd(base / "lv")
        self.uri = f"qemu:///embed?root={base}/emb" if embed else self.libvirtd.uri
        self.node = Corrald(base / "node", extra=["--libvirt-uri", self.uri])
        self.guest_files = guest_files

    def start_node(self, pause_at: str = "", pause_seconds: float = 120) -> ApiSession:
        start(self.node, pause_at=pause_at, pause_seconds=pause_seconds)
        install_guest_files(self.node, self.guest_files)
        return self.node.session()

    @property
    def local(self) -> Path:
        return self.node.data_dir / "local"

    def qemus(self) -> list[int]:
        """This node's QEMU processes (their command lines name its kernel file)."""
        return qemu_pids(str(self.node.data_dir))

    def volumes(self, vmid: int) -> list[str]:
        return sorted(p.name for p in (self.local / "images" / str(vmid)).glob("*"))

    def domains(self) -> str:
        """`virsh list --all` of the private libvirtd."""
        return self.libvirtd.virsh("list", "--all").stdout

    def config(self, vmid: int) -> dict[str, Any]:
        return {
            "vmid": vmid,
            "memory": 128,
            "kvm": 0,
            "serial0": "socket",
            "tablet": 0,
            "virtio0": "local:0.01",
            "kernel": "local:snippets/vmlinuz",
            "initrd": "local:snippets/initrd.img",
            "cmdline": self.guest_files["cmdline"],
        }

    def status(self, s: ApiSession, vmid: int) -> str:
        return str(s.data("GET", f"/nodes/{NODE}/qemu/{vmid}/status/current")["status"])

    def assert_truthful(self, s: ApiSession, vmid: int, timeout: float = 20) -> str:
        """The API's status of `vmid` is the world's: running with exactly one QEMU,
        or stopped with none. Returns it. Given `timeout` s to settle: libvirt,
        reconnecting, may be killing a QEMU whose start it did not finish."""

        def seen() -> tuple[str, list[int]]:
            return self.status(s, vmid), self.qemus()

        def settled() -> str | None:
            status, qemus = seen()
            return status if (status, len(qemus)) in (("running", 1), ("stopped", 0)) else None

        try:
            return str(wait_for(settled, timeout, 0.2, what="the VM's status to match QEMU"))
        except AssertionError:
            raise AssertionError(f"API status and QEMU processes disagree: {seen()}") from None

    def assert_exists_once(self, s: ApiSession, vmid: int) -> None:
        """The VM is there, whole: its config, its one volume, no lock, no stuck task."""
        config = s.data("GET", f"/nodes/{NODE}/qemu/{vmid}/config")
        assert config["virtio0"].startswith(f"local:{vmid}/vm-{vmid}-disk-0.raw")
        assert self.volumes(vmid) == [f"vm-{vmid}-disk-0.raw"]
        assert_clean(self.node, s)

    def assert_gone(self, s: ApiSession, vmid: int) -> None:
        assert s.get(f"/nodes/{NODE}/qemu/{vmid}/config").status_code != 200
        assert self.volumes(vmid) == []
        assert not [p for p in self.qemus()]
        st = store(self.node)
        try:
            assert st.get(f"guests/{vmid}") is None
        finally:
            st.close()
        assert_clean(self.node, s)

    def wait_status(self, s: ApiSession, vmid: int, status: str, timeout: float = 30) -> None:
        wait_for(lambda: self.status(s, vmid) == status, timeout, 0.1, what=f"VM {status}")

    def cleanup(self) -> None:
        try:
            self.node.stop()
        finally:
            try:
                if "embed" in self.uri:
                    virsh_cleanup(self.uri)
                else:
                    if self.libvirtd.pid is None:
                        self.libvirtd.start()
                    for name in self.libvirtd.virsh("list", "--all", "--name").stdout.split():
                        self.libvirtd.virsh("destroy", name)
                        self.libvirtd.virsh("undefine", "--nvram", name)
            except Exception:  # noqa: BLE001 - the processes go below all the same
                pass
            finally:
                self.libvirtd.stop()
                kill_qemus_under(str(self.base))
                shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def vm_world(guest_files: dict[str, str], *, embed: bool = False) -> Iterator[VmWorld]:
    base = Path(short_tmp("crlflv"))  # QEMU's UNIX sockets need short paths
    base.chmod(0o755)
    w = VmWorld(base, guest_files, embed=embed)
    try:
        if not embed:
            w.libvirtd.start()
        yield w
    finally:
        w.cleanup()


def signal_pending(pid: int, sig: int) -> bool:
    """`sig` is pending on process `pid` (sent, not yet delivered: it is stopped)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("ShdPnd:") or line.startswith("SigPnd:"):
                if int(line.split()[1], 16) & (1 << (sig - 1)):
                    return True
    return False
