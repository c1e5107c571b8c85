"""corral's backup archives: names, layout, compression, config text.

Names are Proxmox's, `vzdump-{lxc|qemu}-VMID-YYYY_MM_DD-HH_MM_SS.tar[.zst|.gz]`,
in the `dump/` folder of a storage with `backup` content, so they list, sort
and prune as Proxmox users expect.

Layout (plain POSIX tar, optionally compressed as a whole):

- CT (as Proxmox's vzdump-lxc): the root filesystem as `./...`, preceded by
  the guest config as `./etc/vzdump/pct.conf` in Proxmox's text format. GNU
  tar restores it by hand (`tar -xpf ... --numeric-owner`).
- VM (Proxmox's VMA needs the `vma` tool, which Debian lacks): first
  `qemu-server.conf` (the config, Proxmox's text format), then one member
  `disk-drive-KEY.raw` per disk holding its raw image (e.g.
  `disk-drive-scsi0.raw`). By hand: `tar -xf ARCHIVE`, then `qemu-img
  convert -f raw disk-drive-scsi0.raw ...` or `qm importdisk`.

Config text: `key: value` lines; the description as leading `#` lines.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import time
from typing import IO, Any

from corral.cluster.errors import ParamError

CT_CONF = "./etc/vzdump/pct.conf"
VM_CONF = "qemu-server.conf"
DISK_MEMBER = re.compile(r"disk-drive-([a-z]+\d+)\.raw")
COMPRESS = {"zstd": ".zst", "gzip": ".gz", "0": "", "none": ""}
_NAME = re.compile(r"vzdump-(lxc|qemu)-(\d+)-(\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d)\.tar(\.zst|\.gz)?")
BLOCK = 512


def archive_name(type: str, vmid: int, when: float, compress: str) -> str:
    if compress not in COMPRESS:
        raise ParamError.one("compress", f"unknown compression '{compress}'")
    stamp = time.strftime("%Y_%m_%d-%H_%M_%S", time.localtime(when))
    return f"vzdump-{type}-{vmid}-{stamp}.tar{COMPRESS[compress]}"


def parse_name(name: str) -> tuple[str, int, str] | None:
    """(type, vmid, stamp) of an archive name, None if it is not one."""
    m = _NAME.fullmatch(name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def compressor(compress: str) -> list[str] | None:
    return {"zstd": ["zstd", "-q", "-c", "-T1"], "gzip": ["gzip", "-c", "-6"]}.get(compress)


def decompressor(name: str) -> list[str] | None:
    if name.endswith(".zst"):
        return ["zstd", "-q", "-d", "-c"]
    if name.endswith(".gz"):
        return ["gzip", "-d", "-c"]
    return None


def config_text(config: dict[str, Any]) -> str:
    lines = [f"#{ln}" for ln in str(config.get("description") or "").splitlines()]
    for key in sorted(config):
        if key != "description" and config[key] is not None:
            lines.append(f"{key}: {config[key]}")
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    desc = []
    for line in text.splitlines():
        if line.startswith("["):
            break  # a snapshot section: not part of the guest's current config
        if line.startswith("#"):
            desc.append(line[1:])
            continue
        key, sep, value = line.partition(": ")
        if sep and re.fullmatch(r"[a-z][a-z0-9_\-]*", key):
            out[key] = value
    if desc:
        out["description"] = "\n".join(desc)
    return out


def member_header(name: str, size: int, *, mode: int = 0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(time.time())
    return info.tobuf(format=tarfile.PAX_FORMAT)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def small_member(name: str, data: bytes) -> bytes:
    return member_header(name, len(data)) + data + padding(len(data))


END = b"\0" * (2 * BLOCK)

# -- sparse disk members ----------------------------------------------------------------
# A disk image is mostly holes or zeros: it is stored as a GNU tar sparse member
# (PAX format 1.0: the map of data extents, then only their bytes), which GNU
# tar and Python's tarfile expand on extraction.
PIECE = 64 << 10  # zero detection granularity: a zero piece becomes a hole
USTAR_MAX = 8**11 - 1  # a larger member size needs a pax "size", which Python's
# tarfile 3.11 misplaces for sparse members: those are stored plain instead.


class SparseSpool:
    """A file that leaves zero pieces of what is written to it as holes and
    remembers the data extents (offset, length), merged."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.pos = 0
        self.extents: list[tuple[int, int]] = []

    def write(self, data: Any) -> int:
        view = memoryview(data)
        start = 0
        while start < len(view):  # pieces at multiples of PIECE in the file: holes align
            n = min(PIECE - self.pos % PIECE, len(view) - start)
            self._piece(view[start : start + n])
            start += n
        return len(view)

    def _piece(self, piece: memoryview) -> None:
        n = len(piece)
        if (not piece[0] and not piece[-1]) and not piece.tobytes().lstrip(b"\0"):
            self.fh.seek(n, 1)
        else:
            self.fh.write(piece)
            if self.extents and sum(self.extents[-1]) == self.pos:
                off, length = self.extents[-1]
                self.extents[-1] = (off, length + n)
            else:
                self.extents.append((self.pos, n))
        self.pos += n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.fh.truncate(self.pos)
        self.fh.close()


def scan_extents(path: str, *, zeros: bool = True) -> list[tuple[int, int]]:
    """Data extents of the file at `path`: its allocated ranges (SEEK_DATA), less
    the zero pieces in them when `zeros` (which reads the data once more)."""
    found: list[tuple[int, int]] = []
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        fd = fh.fileno()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # only a hole remains
            end = os.lseek(fd, start, os.SEEK_HOLE)
            if not zeros:
                found.append((start, end - start))
                pos = end
                continue
            fh.seek(start)
            off = start
            while off < end:
                data = fh.read(min(1 << 20, end - off))
                if not data:
                    break
                for i in range(0, len(data), PIECE):
                    piece = data[i : i + PIECE]
                    if piece[0] or piece[-1] or piece.lstrip(b"\0"):
                        at = off + i
                        if found and sum(found[-1]) == at:
                            found[-1] = (found[-1][0], found[-1][1] + len(piece))
                        else:
                            found.append((at, len(piece)))
                off += len(data)
            pos = end
    return found


def sparse_member(
    sink: Any, name: str, path: str, extents: list[tuple[int, int]] | None = None
) -> tuple[int, int]:
    """Write the file at `path` as member `name`, sparse (GNU 1.0) where that fits
    the ustar size field; returns (real size, bytes of data stored)."""
    size = os.path.getsize(path)
    extents = scan_extents(path) if extents is None else extents
    if not extents or sum(extents[-1]) != size:
        extents = [*extents, (size, 0)]  # GNU tar sizes the file by its map's end
    table = f"{len(extents)}\n" + "".join(f"{o}\n{n}\n" for o, n in extents)
    table_bytes = table.encode() + padding(len(table))
    stored = len(table_bytes) + sum(n for _, n in extents)
    with open(path, "rb") as fh:
        if stored > USTAR_MAX:
            sink.write(member_header(name, size))
            _copy_range(fh, 0, size, sink)
            sink.write(padding(size))
            return size, size
        info = tarfile.TarInfo(f"./GNUSparseFile.0/{name}")
        info.size, info.mode, info.mtime = stored, 0o644, int(time.time())
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(size),
        }
        sink.write(info.tobuf(format=tarfile.PAX_FORMAT))
        sink.write(table_bytes)
        for off, n in extents:
            _copy_range(fh, off, n, sink)
        sink.write(padding(stored))
    return size, stored - len(table_bytes)


def _copy_range(fh: IO[bytes], off: int, n: int, sink: Any) -> None:
    fh.seek(off)
    while n:
        data = fh.read(min(1 << 20, n))
        if not data:
            raise OSError(f"{fh.name} is shorter than expected")
        sink.write(data)
        n -= len(data)


class Sink(io.RawIOBase):
    """Where an archive's bytes go: counted, throttled to `bwlimit` KiB/s (0: no
    limit), optionally through a compressor process, into `out`."""

    def __init__(self, out: IO[bytes], *, compress: str, bwlimit: int = 0) -> None:
        argv = compressor(compress)
        self.proc = (
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
            if argv
            else None
        )
        self.target: IO[bytes] = self.proc.stdin if self.proc else out  # type: ignore[assignment]
        self.bytes = 0
        self.rate = bwlimit * 1024
        self.started = time.monotonic()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.target.write(data)
        self.bytes += len(data)
        if self.rate:
            ahead = self.bytes / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)
        return len(data)

    def finish(self, timeout: float = 600.0) -> None:
        if self.proc is None:
            self.target.flush()
            return
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        err = self.proc.stderr.read()
        if self.proc.wait(timeout) != 0:
            raise OSError(f"compressor failed: {err.decode(errors='replace').strip()}")

    def abort(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)


def open_archive(path: str) -> tuple[IO[bytes], subprocess.Popen[bytes] | None]:
    """A readable stream of the uncompressed tar, and the decompressor to wait for."""
    argv = decompressor(path)
    if argv is None:
        return open(path, "rb"), None  # noqa: SIM115 - the caller closes it
    proc = subprocess.Popen([*argv, "--", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    return proc.stdout, proc


def close_archive(stream: IO[bytes], proc: subprocess.Popen[bytes] | None) -> None:
    stream.close()
    if proc is not None:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def read_config(path: str, type: str) -> dict[str, Any]:
    """The guest config stored in archive `path` (its first member)."""
    return parse_config(read_config_text(path, type))


def read_config_text(path: str, type: str) -> str:
    """The config member's text, as stored (Proxmox's vzdump/extractconfig)."""
    stream, proc = open_archive(path)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            member = tar.next()
            want = CT_CONF if type == "lxc" else VM_CONF
            if member is None or member.name.lstrip("./") != want.lstrip("./"):
                raise ParamError.one("archive", f"'{path}' holds no {type} guest config")
            fh = tar.extractfile(member)
            assert fh is not None
            return fh.read(1 << 20).decode(errors="replace")
    except tarfile.TarError as err:
        raise ParamError.one("archive", f"not a corral/vzdump archive: {err}") from None
    finally:
        if proc is not None:
            proc.kill()
        close_archive(stream, proc)
