"""A test-local `VolumeAccess` on a temp dir, laid out as a Proxmox dir storage.

Used until corral.storage.volumes.Volumes exists (the storage engineer is
delivering it in parallel); it implements exactly the protocol the driver
uses, on real directories.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from corral.cluster.errors import NotFound, NotSupported, ParamError


class TempVolumes:
    def __init__(self, root: str, storage: str = "crltmp") -> None:
        self.root = root
        self.storage = storage
        self.sizes: dict[str, int] = {}
        os.makedirs(os.path.join(root, "template", "cache"), exist_ok=True)

    def add_template(self, archive: str) -> str:
        dest = os.path.join(self.root, "template", "cache", os.path.basename(archive))
        if not os.path.exists(dest):
            shutil.copy(archive, dest)
        return f"{self.storage}:vztmpl/{os.path.basename(archive)}"

    def _path(self, volid: str) -> str:
        storage, _, name = volid.partition(":")
        if storage != self.storage:
            raise NotFound(what=f"storage '{storage}'")
        if name.startswith("vztmpl/"):
            return os.path.join(self.root, "template", "cache", name[len("vztmpl/") :])
        return os.path.join(self.root, "images", name)

    def alloc(
        self,
        storage: str,
        vmid: int,
        *,
        size: int,
        fmt: str | None = None,
        content: str = "images",
        name: str | None = None,
    ) -> str:
        if storage != self.storage:
            raise ParamError.one("storage", f"storage '{storage}' does not exist")
        if content != "rootdir":
            raise NotSupported(what=f"content {content}")
        n = 0
        while os.path.exists(self._path(f"{storage}:{vmid}/subvol-{vmid}-disk-{n}.subvol")):
            n += 1
        volid = f"{storage}:{vmid}/subvol-{vmid}-disk-{n}.subvol"
        os.makedirs(self._path(volid))
        self.sizes[volid] = size
        return volid

    def free(self, volid: str) -> None:
        path = self._path(volid)
        shutil.rmtree(path)
        self.sizes.pop(volid, None)
        parent = os.path.dirname(path)
        if not os.listdir(parent):
            os.rmdir(parent)

    def resize(self, volid: str, size: int) -> None:
        self.sizes[volid] = max(size, self.sizes.get(volid, 0))

    def size(self, volid: str) -> int:
        return self.sizes.get(volid, 0)

    def qemu_disk(self, volid: str) -> dict[str, Any]:
        raise NotSupported(what="qemu_disk")

    def mount_rootdir(self, volid: str) -> str:
        path = self._path(volid)
        if not os.path.isdir(path):
            raise NotFound(what=f"volume {volid}")
        return path

    def unmount_rootdir(self, volid: str) -> None:
        return None

    def file_path(self, volid: str) -> str:
        path = self._path(volid)
        if not os.path.isfile(path):
            raise NotFound(what=f"volume {volid}")
        return path

    def owned(self) -> list[str]:
        base = os.path.join(self.root, "images")
        return sorted(os.listdir(base)) if os.path.isdir(base) else []
