"""A tiny bootable test guest: Debian's kernel plus a busybox initramfs built here.

The initramfs `/init`:

- prints `MARKER_UP` on the serial console once per boot (a reset shows a
  second one), then loads the modules it needs from the Debian kernel's tree
  (dependencies resolved from modules.dep: virtio, IDE/ATA cdrom, iso9660,
  ACPI button, evdev, balloon);
- with `crlcidata=1` on the kernel command line, waits for the cloud-init
  cdrom and prints its meta-data between two markers;
- watches the ACPI "Power Button" input device and powers off (`poweroff -f`)
  on the first event. busybox `acpid` did not react to the button here, so a
  shell reads one raw `input_event` with `dd` instead;
- prints `MARKER_READY`, then runs a (non-interactive) shell on ttyS0
  forever, so a test can type `echo $((6*7))` into the serial socket and
  read `42` back.

The archive is written in Python (cpio "newc") so the build needs no tools
beyond busybox-static and linux-image-amd64.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

MARKER_UP = "CORRAL-GUEST-UP"
MARKER_READY = "CORRAL-GUEST-READY"
MARKER_POWEROFF = "CORRAL-GUEST-POWEROFF"
CIDATA_BEGIN = "CORRAL-CIDATA-BEGIN"
CIDATA_END = "CORRAL-CIDATA-END"
BUSYBOX = "/usr/bin/busybox"
# quiet keeps TCG boots short (no console output to emulate); panic=-1 reboots
# at once instead of hanging if /init dies.
CMDLINE = "console=ttyS0 quiet loglevel=3 panic=-1"

# What the guest needs; their dependencies are added from modules.dep.
WANTED = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_balloon",
    "ata_piix",
    "sr_mod",
    "isofs",
    "button",
    "evdev",
)

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo {MARKER_UP} > /dev/ttyS0
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m.ko 2>/dev/null; done
if grep -q crlcidata=1 /proc/cmdline; then
  i=0
  while [ ! -b /dev/sr0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  if mount -t iso9660 -o ro /dev/sr0 /mnt 2>/dev/null; then
    {{ echo {CIDATA_BEGIN}; cat /mnt/meta-data; echo; echo {CIDATA_END}; }} > /dev/ttyS0
    umount /mnt
  fi
fi
i=0
while [ $i -lt 50 ]; do
  for e in /sys/class/input/event*; do
    if grep -q "Power Button" $e/device/name 2>/dev/null; then
      dev=/dev/input/${{e##*/}}
      ( dd if=$dev of=/dev/null bs=24 count=1 2>/dev/null
        echo {MARKER_POWEROFF} > /dev/ttyS0; poweroff -f ) &
      i=1000
    fi
  done
  [ $i -lt 1000 ] && sleep 0.1
  i=$((i+1))
done
echo {MARKER_READY} > /dev/ttyS0
# Output through a pipe keeps ash non-interactive: no prompt, no line editing
# (its cursor-position query would eat input typed before it started).
while true; do sh < /dev/ttyS0 2>&1 | cat > /dev/ttyS0; done
"""


def find_kernel() -> tuple[str, str]:
    """(vmlinuz path, module directory) of the newest installed Debian kernel."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    for kernel in reversed(kernels):
        version = kernel.removeprefix("/boot/vmlinuz-")
        moddir = f"/lib/modules/{version}"
        if os.path.isfile(f"{moddir}/modules.dep"):
            return kernel, moddir
    raise FileNotFoundError("no /boot/vmlinuz-* with its /lib/modules tree (linux-image-amd64)")


def _modname(rel: str) -> str:
    return re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", os.path.basename(rel)).replace("-", "_")


def load_order(moddir: str, wanted: tuple[str, ...] = WANTED) -> list[tuple[str, str]]:
    """[(name, path)] for `wanted` and their dependencies, dependencies first."""
    deps: dict[str, tuple[str, list[str]]] = {}
    with open(f"{moddir}/modules.dep", encoding="utf-8") as fh:
        for line in fh:
            rel, _, rest = line.partition(":")
            deps[_modname(rel)] = (f"{moddir}/{rel}", [_modname(d) for d in rest.split()])
    order: list[tuple[str, str]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in deps:  # absent: built into the kernel
            return
        seen.add(name)
        for dep in deps[name][1]:
            visit(dep)
        order.append((name, deps[name][0]))

    for name in wanted:
        visit(name)
    return order


def _module_bytes(path: str) -> bytes:
    data = Path(path).read_bytes()
    if path.endswith(".xz"):
        import lzma

        return lzma.decompress(data)
    if path.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    if path.endswith(".zst"):
        raise ValueError(f"zstd-compressed modules are not supported: {path}")
    return data  # busybox insmod loads plain .ko files


class _Cpio:
    """Minimal cpio "newc" writer (what the kernel's initramfs unpacker reads)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", target: str = "") -> None:
        body = target.encode() if target else data
        namez = name.encode() + b"\0"
        nlink = 2 if mode & 0o170000 == 0o040000 else 1
        fields = [self.ino, mode, 0, 0, nlink, 0, len(body), 0, 0, 0, 0, len(namez), 0]
        header = b"070701" + b"".join(f"{f:08X}".encode() for f in fields)
        self.ino += 1
        self.parts.append(header + namez + b"\0" * (-(110 + len(namez)) % 4))
        self.parts.append(body + b"\0" * (-len(body) % 4))

    def dir(self, name: str) -> None:
        self.add(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self.add(name, 0o100000 | mode, data)

    def close(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return b"".join(self.parts)


def build_initrd(extra: tuple[str, ...] = ()) -> bytes:
    """`extra`: more kernel modules to load at boot (e.g. ext4 for a filesystem test)."""
    _, moddir = find_kernel()
    archive = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "mnt", "etc", "lib", "lib/modules"):
        archive.dir(d)
    archive.file("bin/busybox", Path(BUSYBOX).read_bytes())
    archive.add("bin/sh", 0o120777, target="busybox")
    archive.file("init", INIT.encode())
    order = load_order(moddir, WANTED + extra)
    for name, path in order:
        archive.file(f"lib/modules/{name}.ko", _module_bytes(path), 0o644)
    archive.file("lib/modules/load-order", "".join(f"{n}\n" for n, _ in order).encode(), 0o644)
    return archive.close()


def build_guest(out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write `initrd.img` into out_dir; returns {"kernel", "initrd", "cmdline"}."""
    kernel, _ = find_kernel()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    initrd = out / "initrd.img"
    initrd.write_bytes(build_initrd())
    return {"kernel": kernel, "initrd": str(initrd), "cmdline": CMDLINE}


def read_console(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
