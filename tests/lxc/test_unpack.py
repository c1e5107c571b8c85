"""Safe extraction of untrusted rootfs archives, on real tar files."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from corral.cluster.errors import ParamError
from corral.lxc import unpack


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in kw.items():
        setattr(info, k, v)
    return info


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/../evil"])
def test_dotdot_refused(tmp_path: Path, name: str) -> None:
    arc = _tar(tmp_path / "a.tar.gz", [(_info(name), b"x")])
    (tmp_path / "root").mkdir()
    with pytest.raises(ParamError):
        unpack.extract(arc, str(tmp_path / "root"))
    assert not (tmp_path / "evil").exists()


def test_absolute_names_land_inside(tmp_path: Path) -> None:
    arc = _tar(tmp_path / "a.tar.gz", [(_info("/etc/x"), b"x")])
    (tmp_path / "root").mkdir()
    unpack.extract(arc, str(tmp_path / "root"))
    assert (tmp_path / "root/etc/x").read_bytes() == b"x"


def test_no_write_through_planted_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [
        (_info("etc", tarfile.SYMTYPE, linkname=str(outside)), None),
        (_info("etc/passwd"), b"pwned"),
    ]
    arc = _tar(tmp_path / "a.tar.gz", members)
    (tmp_path / "root").mkdir()
    with pytest.raises(ParamError):
        unpack.extract(arc, str(tmp_path / "root"))
    assert not (outside / "passwd").exists()


def test_file_replacing_symlink_does_not_follow_it(tmp_path: Path) -> None:
    target = tmp_path / "hostfile"
    target.write_text("host")
    members = [(_info("x", tarfile.SYMTYPE, linkname=str(target)), None), (_info("x"), b"guest")]
    arc = _tar(tmp_path / "a.tar.gz", members)
    (tmp_path / "root").mkdir()
    unpack.extract(arc, str(tmp_path / "root"))
    assert target.read_text() == "host"
    assert (tmp_path / "root/x").read_text() == "guest"


def test_hardlink_outside_refused(tmp_path: Path) -> None:
    arc = _tar(
        tmp_path / "a.tar.gz", [(_info("l", tarfile.LNKTYPE, linkname="../../etc/shadow"), None)]
    )
    (tmp_path / "root").mkdir()
    with pytest.raises(ParamError):
        unpack.extract(arc, str(tmp_path / "root"))


def test_unprivileged_no_devices_and_shifted_ids(tmp_path: Path) -> None:
    members = [
        (_info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
        (_info("home/u/f", uid=1000, gid=1000), b"f"),
        (_info("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"), None),
    ]
    arc = _tar(tmp_path / "a.tar.gz", members)
    root = tmp_path / "root"
    root.mkdir()
    logs: list[str] = []
    unpack.extract(arc, str(root), id_shift=100000, allow_devices=False, log=logs.append)
    assert not (root / "dev/sda").exists()
    assert os.stat(root / "home/u/f").st_uid == 101000
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert any("device" in m for m in logs)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.xz", ".tar.zst", ".tar"])
def test_pack_and_extract_round_trip(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("h\n")
    os.symlink("/bin/busybox", src / "sh")
    arc = unpack.pack(str(src), str(tmp_path / f"t{suffix}"))
    dest = tmp_path / "dest"
    dest.mkdir()
    assert unpack.extract(arc, str(dest)) == 3
    assert (dest / "etc/hostname").read_text() == "h\n"
    assert os.readlink(dest / "sh") == "/bin/busybox"


def test_unknown_archive_type(tmp_path: Path) -> None:
    with pytest.raises(ParamError) as err:
        unpack.extract(str(tmp_path / "x.zip"), str(tmp_path))
    assert "ostemplate" in err.value.errors
