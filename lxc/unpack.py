"""Safe extraction of root filesystem archives (.tar, .tar.gz, .tar.xz, .tar.zst).

A template is untrusted input: no member may land outside the root (`..`,
absolute names, writing through a symlink an earlier member planted), hard
links must point inside, and an unprivileged container gets no device nodes
and has its ids shifted into its user namespace range. This Python (3.11.2)
has no tarfile extraction filters, so the checks are done here, member by
member, in one streaming pass (zstd through the `zstd` tool).
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from corral.cluster.errors import CommandFailed, ParamError

LogFn = Callable[[str], None]
# Generous: a Debian rootfs is ~300 MB on a busy 2-core machine.
UNPACK_TIMEOUT = 900.0


def compression(path: str) -> str:
    for suffix, kind in (
        (".tar.gz", "gz"),
        (".tgz", "gz"),
        (".tar.xz", "xz"),
        (".tar.zst", "zst"),
        (".tar.zstd", "zst"),
        (".tar", ""),
    ):
        if path.endswith(suffix):
            return kind
    raise ParamError.one("ostemplate", f"unsupported archive type '{os.path.basename(path)}'")


@contextmanager
def open_archive(path: str) -> Iterator[tarfile.TarFile]:
    """A streaming TarFile over `path`, whatever its compression."""
    kind = compression(path)
    if kind != "zst":
        with tarfile.open(path, mode=f"r|{kind}" if kind else "r|") as tar:  # type: ignore[call-overload]
            yield tar
        return
    with open(path, "rb") as src:
        proc = subprocess.Popen(
            ["zstd", "-dc", "--no-progress"],
            stdin=src,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                yield tar
            _, err = proc.communicate(timeout=UNPACK_TIMEOUT)
            if proc.returncode != 0:
                raise CommandFailed(cmd="zstd -dc", stderr=err.decode(errors="replace"))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def safe_name(name: str) -> str | None:
    """The member's path relative to the root, or None for the root itself.

    Raises ParamError for names that escape."""
    if "\0" in name:
        raise ParamError.one("ostemplate", "archive member name contains NUL")
    norm = posixpath.normpath("/" + name).lstrip("/")
    if any(part == ".." for part in name.split("/")) or norm.startswith(".."):
        raise ParamError.one("ostemplate", f"archive member escapes the root: '{name}'")
    return norm or None


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def extract(
    archive: str,
    dest: str,
    *,
    id_shift: int = 0,
    allow_devices: bool = True,
    log: LogFn | None = None,
) -> int:
    """Unpack `archive` into the existing directory `dest`; returns the member count."""
    root = os.path.realpath(dest)
    try:
        count, skipped = _extract(archive, root, id_shift=id_shift, allow_devices=allow_devices)
    except _UNREADABLE as err:
        name = os.path.basename(archive)
        raise ParamError.one("ostemplate", f"cannot read archive '{name}': {err}") from None
    if skipped and log is not None:
        log(f"skipped {skipped} device nodes (not allowed in an unprivileged container)")
    return count


# What a corrupt or truncated archive raises while it is read.
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def _extract(archive: str, root: str, *, id_shift: int, allow_devices: bool) -> tuple[int, int]:
    count = skipped = 0
    with open_archive(archive) as tar:
        for member in tar:
            rel = safe_name(member.name)
            if rel is None:
                if member.isdir():
                    _apply_root_attrs(root, member, id_shift)
                continue
            target = os.path.join(root, rel)
            # The parent must resolve inside the root after any symlinks already unpacked.
            if not _inside(root, os.path.realpath(os.path.dirname(target))):
                raise ParamError.one("ostemplate", f"archive member escapes the root: '{rel}'")
            if member.isdev() or member.isfifo():
                if member.isdev() and not allow_devices:
                    skipped += 1
                    continue
            if member.islnk():
                link = safe_name(member.linkname)
                if link is None or not _inside(root, os.path.realpath(os.path.join(root, link))):
                    raise ParamError.one(
                        "ostemplate", f"hard link points outside the root: '{member.linkname}'"
                    )
                member.linkname = link
            # Never write through whatever a previous member left at this path.
            if os.path.lexists(target) and not (member.isdir() and os.path.isdir(target)):
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
            member.name = rel
            if id_shift:
                member.uid += id_shift
                member.gid += id_shift
            tar.extract(member, root, numeric_owner=True)
            count += 1
    return count, skipped


def _apply_root_attrs(root: str, member: tarfile.TarInfo, id_shift: int) -> None:
    os.chown(root, member.uid + id_shift, member.gid + id_shift)
    os.chmod(root, stat.S_IMODE(member.mode) or 0o755)


def pack(src_dir: str, dest_archive: str, *, log: LogFn | None = None) -> str:
    """Write `src_dir`'s contents as a .tar.gz/.tar.xz/.tar.zst (ids kept numeric)."""
    kind = compression(dest_archive)
    tmp = dest_archive + ".part"
    try:
        if kind == "zst":
            with open(tmp, "wb") as out:
                proc = subprocess.Popen(
                    ["zstd", "-q", "-c", "-T0"], stdin=subprocess.PIPE, stdout=out,
                    stderr=subprocess.PIPE,
                )  # fmt: skip
                assert proc.stdin is not None
                _write_tar(src_dir, proc.stdin, "w|")
                proc.stdin.close()
                proc.wait(timeout=UNPACK_TIMEOUT)
                assert proc.stderr is not None
                err = proc.stderr.read()
                if proc.returncode:
                    raise CommandFailed(cmd="zstd -c", stderr=err.decode(errors="replace"))
        else:
            with open(tmp, "wb") as out:
                _write_tar(src_dir, out, f"w|{kind}" if kind else "w|")
        os.replace(tmp, dest_archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if log is not None:
        log(f"wrote {dest_archive} ({os.path.getsize(dest_archive)} bytes)")
    return dest_archive


def _write_tar(src_dir: str, fileobj: IO[bytes], mode: str) -> None:
    with tarfile.open(fileobj=fileobj, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for name in sorted(os.listdir(src_dir)):
            tar.add(os.path.join(src_dir, name), arcname="./" + name, filter=_numeric)


def _numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""
    return info
