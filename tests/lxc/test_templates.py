"""Template builders: busybox from the host, OCI layouts the test builds, debootstrap (opt-in)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from corral.cluster.errors import ParamError
from corral.lxc import templates, unpack
from tests.lxc.helpers import layer as _layer
from tests.lxc.helpers import make_oci_layout


def test_busybox_template(busybox_template: str, tmp_path: Path) -> None:
    assert busybox_template.endswith(".tar.gz")
    root = tmp_path / "root"
    root.mkdir()
    unpack.extract(busybox_template, str(root))
    assert os.access(root / "bin/busybox", os.X_OK)
    assert os.readlink(root / "sbin/init") == "/bin/busybox"
    assert "::sysinit:/etc/init.d/rcS" in (root / "etc/inittab").read_text()
    assert os.access(root / "etc/init.d/rcS", os.X_OK)


def test_bad_template_name(tmp_path: Path) -> None:
    with pytest.raises(ParamError):
        templates.build_busybox(str(tmp_path), name="../x.tar.gz")


def test_apt_mirror_from_sources() -> None:
    assert templates.apt_mirror().startswith("http")


def _oci_with_whiteouts(tmp_path: Path) -> Path:
    lower = _layer(
        {"a": None, "a/1": b"one", "a/2": b"two", "d": None, "d/x": b"x", "keep": b"k"}, True
    )
    upper = _layer({"a/.wh.1": b"", "d/.wh..wh..opq": b"", "d/y": b"y", "new": b"n"}, False)
    return make_oci_layout(tmp_path / "layout", [lower, upper])


def _listing(archive: str, tmp_path: Path) -> set[str]:
    root = tmp_path / "out"
    root.mkdir()
    unpack.extract(archive, str(root))
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_oci_layout_whiteouts_and_opaque(tmp_path: Path) -> None:
    layout = _oci_with_whiteouts(tmp_path)
    archive = templates.import_oci(
        str(layout), str(tmp_path / "cache"), name="img.tar.gz", log=lambda _m: None
    )
    assert _listing(archive, tmp_path) == {"a", "a/2", "d", "d/y", "keep", "new"}


def test_oci_archive(tmp_path: Path) -> None:
    layout = _oci_with_whiteouts(tmp_path)
    tarball = tmp_path / "image.oci.tar"
    with tarfile.open(tarball, "w") as tar:
        for name in sorted(os.listdir(layout)):
            tar.add(layout / name, arcname=name)
    archive = templates.import_oci(str(tarball), str(tmp_path / "cache"), log=lambda _m: None)
    assert os.path.basename(archive) == "image-oci_amd64.tar.gz"
    assert "a/1" not in _listing(archive, tmp_path)


def test_oci_missing_blob(tmp_path: Path) -> None:
    layout = _oci_with_whiteouts(tmp_path)
    for blob in (layout / "blobs/sha256").iterdir():
        if blob.stat().st_size > 200:
            blob.unlink()
    with pytest.raises(ParamError):
        templates.import_oci(str(layout), str(tmp_path / "cache"), log=lambda _m: None)


def test_ostype_through_the_os_release_symlink(tmp_path: Path) -> None:
    """Debian's /etc/os-release is a symlink to ../usr/lib/os-release."""
    from corral.lxc import rootfs

    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib/os-release").write_text('PRETTY_NAME="Debian"\nID=debian\n')
    os.symlink("../usr/lib/os-release", tmp_path / "etc/os-release")
    assert rootfs.detect_ostype(str(tmp_path)) == "debian"
    (tmp_path / "usr/lib/os-release").write_text("ID=plan9\n")
    assert rootfs.detect_ostype(str(tmp_path)) == "unmanaged"
