"""Helpers for the real-container tests: the real storage layer on temp dirs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from corral.cluster import bridges
from corral.storage.volumes import Volumes

STORAGE = "crltmp"  # a dir storage for container roots and templates
NO_CT_STORAGE = "crlnoct"  # a dir storage that takes no container roots


def dir_volumes(root: str, template: str | None = None) -> Volumes:
    """The real storage layer on two dir storages under `root`."""
    configs = {
        STORAGE: {"type": "dir", "path": os.path.join(root, "ct"), "content": "rootdir,vztmpl"},
        NO_CT_STORAGE: {"type": "dir", "path": os.path.join(root, "iso"), "content": "iso"},
    }
    vols = Volumes(lambda: configs, node="crlnode")
    if template is not None:
        add_template(vols, template)
    return vols


def add_template(vols: Volumes, archive: str) -> str:
    """Copy `archive` into the storage's vztmpl folder; returns its volume ID."""
    volid = f"{STORAGE}:vztmpl/{os.path.basename(archive)}"
    dest = vols.file_path(volid)
    if not os.path.exists(dest):
        shutil.copy(archive, dest)
    return volid


def owned(vols: Volumes) -> list[str]:
    """Volume folders left on the test storage (read from disk, not from the layer)."""
    images = os.path.join(vols.config(STORAGE)["path"], "images")
    if not os.path.isdir(images):
        return []
    return sorted(
        f"{d}/{f}" for d in os.listdir(images) for f in os.listdir(os.path.join(images, d))
    )


def cleanup_lxcpath(lxcpath: str) -> None:
    """Kill every container of `lxcpath`, remove its veths, then the folder."""
    if not os.path.isdir(lxcpath):
        return
    for name in os.listdir(lxcpath):
        subprocess.run(
            ["lxc-stop", "-P", lxcpath, "-n", name, "-k"], capture_output=True, timeout=60
        )
        for i in range(4):
            bridges.delete_link(f"veth{name}i{i}")
    shutil.rmtree(lxcpath, ignore_errors=True)


# -- OCI image layouts, built by the tests ----------------------------------------


def layer(members: dict[str, bytes | None], compress: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw) if compress else raw


def blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def make_oci_layout(layout: Path, layers: list[bytes]) -> Path:
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = blob(layout, b'{"architecture":"amd64","os":"linux"}')
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": blob(layout, data),
            }
            for data in layers
        ],
    }
    mdigest = blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": mdigest,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return layout
