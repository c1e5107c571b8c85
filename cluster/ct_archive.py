"""A CT's volumes in one vzdump tar: mount points in, and out again.

Proxmox's vzdump-lxc archives the container's tree as the container sees it:
the root filesystem, and under each mount point's path the files of the
mount point volumes that have `backup=1` (a volume mount point without the
flag, a bind or a device mount point is never in a backup:
`mountpoint_backup_enabled` in pve-container). So does corral:

- backup: each included volume is exported as a tar stream by its storage
  (from a snapshot in snapshot mode) and its members are appended to the
  archive under the mount point's path (`./mnt/data/...`), one archive with
  one end marker, which GNU tar extracts as the whole tree;
- restore: one pass over the archive per included volume, keeping the
  members under that volume's path (the root takes what no mount point
  claims), renamed relative to the volume, streamed into the storage's
  import. A volume mount point the backup left out is made again, empty.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import threading
from collections.abc import Iterator
from typing import IO, Any

from corral.cluster import archive
from corral.cluster.errors import CorralError
from corral.cluster.guest_driver import VolumeAccess

CHUNK = 1 << 20
EXPORT_TIMEOUT = 6 * 3600.0


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def is_volume(volid: str) -> bool:
    """A storage volume (`STORAGE:NAME`), not a bind or device mount (a host path)."""
    return not volid.startswith("/") and ":" in volid


def mount_points(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{"rootfs"|"mpN": {"volume": ..., "mp": ..., ...}} from the property strings
    (`VOLUME[,key=value...]`; the config was validated when it was set)."""
    out: dict[str, dict[str, str]] = {}
    for key in sorted(config, key=lambda k: (k != "rootfs", len(k), k)):
        if key != "rootfs" and not re.fullmatch(r"mp\d+", key):
            continue
        fields: dict[str, str] = {}
        for part in str(config[key]).split(","):
            name, sep, value = part.partition("=")
            if sep:
                fields[name.strip()] = value.strip()
            else:
                fields["volume"] = name.strip()
        out[key] = fields
    return out


def plan(mps: dict[str, dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """From parsed rootfs/mpN entries: ({key: path inside the CT} of the volumes in
    the backup, rootfs first as ""), and ({key: why} of the mount points left out)."""
    included: dict[str, str] = {}
    excluded: dict[str, str] = {}
    for key, mp in mps.items():
        if key == "rootfs":
            included[key] = ""
        elif not is_volume(str(mp.get("volume", ""))):
            excluded[key] = "bind or device mount point"
        elif not _flag(mp.get("backup", 0)):
            excluded[key] = "backup=0"
        else:
            included[key] = norm(str(mp.get("mp", "")))
    return dict(sorted(included.items(), key=lambda kv: kv[0] != "rootfs")), excluded


def norm(path: str) -> str:
    """A member or mount path without `./`, leading or trailing slashes."""
    while path.startswith("./"):
        path = path[2:]
    path = path.strip("/")
    return "" if path == "." else path


def owner(name: str, paths: dict[str, str]) -> tuple[str, str] | None:
    """(key, path relative to it) of the volume a member belongs to: the deepest
    mount path that holds it, the root otherwise."""
    best: tuple[str, str] | None = None
    best_len = -1
    for key, mpath in paths.items():
        if mpath == "":
            if best_len < 0:
                best, best_len = (key, name), 0
        elif name == mpath or name.startswith(mpath + "/"):
            if len(mpath) > best_len:
                best, best_len = (key, name[len(mpath) + 1 :]), len(mpath)
    return best


def _renamed(member: tarfile.TarInfo, prefix: str, strip: str = "") -> bytes:
    """The member's header with its name (and hard link target) moved from under
    `strip` to under `prefix`."""

    def move(name: str) -> str:
        rel = norm(name)
        if strip:
            rel = rel[len(strip) + 1 :] if rel != strip else ""
        full = "/".join(p for p in (prefix, rel) if p)
        return "./" + full if full else "."

    member.name = move(member.name)
    if member.islnk():
        member.linkname = move(member.linkname)
    # A pax path/linkpath would override the new names (tarfile gives pax priority).
    member.pax_headers = {
        k: v for k, v in member.pax_headers.items() if k not in ("path", "linkpath")
    }
    return member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _member_data(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    """The member's data blocks, padded to the tar block size."""
    if not member.isreg() or member.size == 0:
        return
    fh = tar.extractfile(member)
    assert fh is not None
    left = member.size
    while left:
        data = fh.read(min(CHUNK, left))
        if not data:
            raise CorralError(f"archive member '{member.name}' is truncated")
        yield data
        left -= len(data)
    yield archive.padding(member.size)


def append_volume(
    sink: Any, volumes: VolumeAccess, volid: str, path: str, *, snap: str | None = None
) -> int:
    """Append the members of volume `volid` to the archive under `path` (the
    storage writes a complete tar; its end marker is left out). Returns the
    member count."""
    rfd, wfd = os.pipe()
    reader, writer = os.fdopen(rfd, "rb", CHUNK), os.fdopen(wfd, "wb", CHUNK)
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            volumes.export(volid, fmt="tar", out=writer, snap=snap)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            failed.append(err)
        finally:
            try:
                writer.close()
            except OSError:
                pass  # the reader went away: its error is the one reported

    thread = threading.Thread(target=produce, name=f"export {volid}", daemon=True)
    thread.start()
    count = 0
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                sink.write(_renamed(member, path))
                for data in _member_data(tar, member):
                    sink.write(data)
                count += 1
    except tarfile.TarError as err:
        if not failed:
            raise CorralError(f"export of {volid} is not a tar stream: {err}") from None
    finally:
        reader.close()  # a producer still writing gets EPIPE instead of blocking
        thread.join(EXPORT_TIMEOUT)
    if failed:
        raise failed[0]
    if thread.is_alive():
        raise CorralError(f"export of {volid} did not finish in {EXPORT_TIMEOUT:.0f} s")
    return count


class _Generated(io.RawIOBase):
    """A readable stream over a generator of byte strings."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            try:
                self.buf = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()
        super().close()


def volume_stream(path: str, key: str, paths: dict[str, str]) -> IO[bytes]:
    """A tar stream of the members of archive `path` that belong to volume `key`
    (`paths`: {key: mount path} of the volumes in the archive), named relative
    to that volume, for a storage's import."""

    def chunks() -> Iterator[bytes]:
        stream, proc = archive.open_archive(path)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    where = owner(norm(member.name), paths)
                    if where is None or where[0] != key:
                        continue
                    yield _renamed(member, "", paths[key])
                    yield from _member_data(tar, member)
        finally:
            archive.close_archive(stream, proc)
        yield archive.END

    return io.BufferedReader(_Generated(chunks()), CHUNK)
