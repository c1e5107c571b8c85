"""/dev/kvm as udev would leave it (issue 10 item 3): `corral status` warns when it
is not group kvm mode 0660, the state that made every VM start take a minute."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
from pathlib import Path

import pytest

from corral.cluster import admin, hostinfo
from tests.util import Corrald


@pytest.fixture
def device(tmp_path: Path) -> Path:
    grp.getgrnam("kvm")  # install.sh creates the group
    dev = tmp_path / "kvm"
    os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a char device, as /dev/kvm
    os.chown(dev, 0, 0)
    return dev


def test_root_only_device_is_a_problem(device: Path) -> None:
    problem = hostinfo.kvm_device_problem(str(device))
    assert problem is not None and "group root mode 0600" in problem and "chgrp kvm" in problem
    os.chown(device, 0, grp.getgrnam("kvm").gr_gid)
    assert hostinfo.kvm_device_problem(str(device)) is not None  # still 0600
    os.chmod(device, 0o660)
    assert hostinfo.kvm_device_problem(str(device)) is None
    assert hostinfo.kvm_device_problem(str(device.with_name("absent"))) is None


def test_corral_status_warns(
    corrald: Corrald,
    device: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(admin, "KVM_DEVICE", str(device))
    with pytest.raises(SystemExit) as exit_:
        admin.main(["--data-dir", str(corrald.data_dir), "status"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "online" in out and f"warning: {device} is group root mode 0600" in out
    os.chown(device, 0, grp.getgrnam("kvm").gr_gid)
    os.chmod(device, 0o660)
    with pytest.raises(SystemExit):
        admin.main(["--data-dir", str(corrald.data_dir), "status"])
    assert "warning" not in capsys.readouterr().out


def test_device_bound_in_from_outside_is_fixed_there(device: Path, tmp_path: Path) -> None:
    """In a container /dev/kvm is the outer host's node, bind-mounted: changing it
    inside would change it for the host, so the hint says where to fix it."""
    target = tmp_path / "bound-kvm"
    target.touch()
    subprocess.run(["mount", "--bind", str(device), str(target)], check=True, timeout=30)
    try:
        problem = hostinfo.kvm_device_problem(str(target))
        assert problem is not None and "bound in from the host" in problem
        assert "chgrp" not in problem
    finally:
        subprocess.run(["umount", str(target)], check=True, timeout=30)
