"""Container templates without internet: busybox, debootstrap, OCI images.

Each builder writes one root filesystem archive into `dest_dir` (a storage's
`template/cache` folder) and returns its path; the lead's CLI exposes them as
`corral template build busybox|debian` and `corral template import-oci PATH`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable

from corral.cluster.errors import CommandFailed, ParamError
from corral.lxc import unpack

LogFn = Callable[[str], None]
BUSYBOX = "/bin/busybox"

# busybox init: runs rcS, powers off cleanly on SIGUSR2/SIGPWR (`lxc-stop`
# sends lxc.signal.halt = SIGPWR); `poweroff` inside the container works too.
_INITTAB = """\
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""

# Static addresses and gateways are set by liblxc before init; this brings up
# loopback, mounts the usual tmpfs and starts udhcpc on interfaces the driver
# lists in /etc/corral/dhcp (net`N`: ip=dhcp).
_RCS = """\
#!/bin/sh
mount -t tmpfs -o mode=755 tmpfs /run 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp 2>/dev/null
[ -r /etc/hostname ] && hostname -F /etc/hostname
ip link set lo up
if [ -r /etc/corral/dhcp ]; then
    for ifc in $(cat /etc/corral/dhcp); do
        udhcpc -b -q -i "$ifc" -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
    done
fi
exit 0
"""

_UDHCPC = """\
#!/bin/sh
case "$1" in
    deconfig) ip -4 addr flush dev "$interface" ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip -4 route replace default via "${router%% *}" dev "$interface"
        ;;
esac
exit 0
"""


def _default_name(name: str | None, default: str) -> str:
    name = name or default
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.tar\.(gz|xz|zst)", name):
        raise ParamError.one("name", f"invalid template file name '{name}'")
    return name


def default_name(kind: str, src: str = "", *, suite: str = "bookworm") -> str:
    """The archive name a builder picks when none is given (`kind`: busybox,
    debian or oci; `src` is the OCI layout or archive path)."""
    if kind == "busybox":
        return "busybox-corral_amd64.tar.gz"
    if kind == "debian":
        return f"debian-{suite}-corral_amd64.tar.zst"
    if kind == "oci":
        base = os.path.basename(os.path.normpath(src)).split(".")[0] or "oci"
        return re.sub(r"[^A-Za-z0-9._+-]", "_", base) + "-oci_amd64.tar.gz"
    raise ParamError.one("kind", f"no template kind '{kind}'")


def _dest(dest_dir: str, name: str) -> str:
    os.makedirs(dest_dir, exist_ok=True)
    return os.path.join(dest_dir, name)


def build_busybox(dest_dir: str, *, name: str | None = None, log: LogFn = print) -> str:
    """A ~1 MB template from the host's static busybox; returns the archive path."""
    name = _default_name(name, default_name("busybox"))
    if not os.path.exists(BUSYBOX):
        raise CommandFailed(cmd=BUSYBOX, stderr="not installed (Debian package busybox-static)")
    with tempfile.TemporaryDirectory(prefix="crl-bb-") as root:
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "etc/corral", "proc",
                  "sys", "dev", "tmp", "run", "root", "var/log", "home",
                  "usr/share/udhcpc", "mnt"):  # fmt: skip
            os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(os.path.join(root, "tmp"), 0o1777)
        shutil.copy2(BUSYBOX, os.path.join(root, "bin/busybox"))
        applets = subprocess.run(
            [BUSYBOX, "--list-full"], capture_output=True, timeout=30, check=True
        ).stdout.decode()
        for applet in applets.split():
            if applet.startswith("/") or ".." in applet or applet == "bin/busybox":
                continue
            link = os.path.join(root, applet)
            if not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink("/bin/busybox", link)
        files = {
            "etc/inittab": _INITTAB,
            "etc/init.d/rcS": _RCS,
            "usr/share/udhcpc/default.script": _UDHCPC,
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
            "etc/group": "root:x:0:\n",
            "etc/shadow": "root:*:19000:0:99999:7:::\n",
            "etc/hostname": "busybox\n",
            "etc/hosts": "127.0.0.1 localhost\n",
            "etc/resolv.conf": "",
            "etc/os-release": 'ID=busybox\nNAME="BusyBox (corral)"\n',
        }
        for rel, text in files.items():
            with open(os.path.join(root, rel), "w") as fh:
                fh.write(text)
        for rel in ("etc/init.d/rcS", "usr/share/udhcpc/default.script"):
            os.chmod(os.path.join(root, rel), 0o755)
        os.chmod(os.path.join(root, "etc/shadow"), 0o600)
        return unpack.pack(root, _dest(dest_dir, name), log=log)


def apt_mirror(sources: str = "/etc/apt") -> str:
    """The Debian mirror apt uses (deb822 `URIs:` or one-line `deb` entries)."""
    paths = [os.path.join(sources, "sources.list")]
    paths += sorted(glob.glob(os.path.join(sources, "sources.list.d", "*")))
    for path in paths:
        try:
            text = open(path).read()
        except OSError:
            continue
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1)
            if re.search(r"/debian/?$", uri) and "security" not in uri:
                return uri
    raise CommandFailed(cmd="apt sources", stderr=f"no Debian mirror in {sources}")


def build_debian(
    dest_dir: str,
    *,
    name: str | None = None,
    log: LogFn = print,
    mirror: str | None = None,
    suite: str = "bookworm",
    timeout: float = 1800.0,
) -> str:
    """A minimal Debian template via debootstrap from apt's mirror (minutes, ~100 MB)."""
    if not re.fullmatch(r"[a-z]+", suite):
        raise ParamError.one("suite", f"invalid suite '{suite}'")
    mirror = mirror or apt_mirror()
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-:/_~]+", mirror):
        raise ParamError.one("mirror", f"invalid mirror URL '{mirror}'")
    name = _default_name(name, default_name("debian", suite=suite))
    with tempfile.TemporaryDirectory(prefix="crl-deb-") as root:
        log(f"debootstrap {suite} from {mirror}")
        # minbase has no init: systemd-sysv gives /sbin/init (Proxmox's templates run systemd).
        argv = ["debootstrap", "--variant=minbase",
                "--include=systemd-sysv,ifupdown,iproute2,isc-dhcp-client",
                suite, root, mirror]  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(
                cmd=" ".join(argv), stderr=f"timed out after {timeout:g} s"
            ) from exc
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).decode(errors="replace")[-2000:]
            raise CommandFailed(cmd=" ".join(argv), stderr=tail)
        shutil.rmtree(os.path.join(root, "var/cache/apt/archives"), ignore_errors=True)
        return unpack.pack(root, _dest(dest_dir, name), log=log)


# -- OCI images -------------------------------------------------------------------

_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


def import_oci(src: str, dest_dir: str, *, name: str | None = None, log: LogFn = print) -> str:
    """An OCI image (layout directory or a tar of one) → a rootfs template.

    Layers apply in manifest order; `.wh.NAME` deletes NAME from lower
    layers and `.wh..wh..opq` empties its directory first (OCI image spec).
    """
    name = _default_name(name, default_name("oci", src))
    with tempfile.TemporaryDirectory(prefix="crl-oci-") as work:
        layout = src
        if os.path.isfile(src):
            layout = os.path.join(work, "layout")
            os.makedirs(layout)
            unpack.extract(src, layout, allow_devices=False)
        layers = _oci_layers(layout)
        root = os.path.join(work, "rootfs")
        os.makedirs(root)
        for i, (blob, media) in enumerate(layers):
            log(f"layer {i + 1}/{len(layers)}: {os.path.basename(blob)[:12]} ({media})")
            _apply_layer(blob, root)
        return unpack.pack(root, _dest(dest_dir, name), log=log)


def _blob(layout: str, digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if not re.fullmatch(r"sha256|sha512", algo) or not re.fullmatch(r"[0-9a-f]{32,128}", hexd):
        raise ParamError.one("src", f"invalid blob digest '{digest}'")
    path = os.path.join(layout, "blobs", algo, hexd)
    if not os.path.isfile(path):
        raise ParamError.one("src", f"blob {digest} is missing from the layout")
    return path


def _oci_layers(layout: str) -> list[tuple[str, str]]:
    try:
        index = json.load(open(os.path.join(layout, "index.json")))
    except (OSError, ValueError) as err:
        raise ParamError.one("src", f"not an OCI layout (index.json: {err})") from None
    manifests = index.get("manifests") or []
    # Follow nested indexes; pick linux/amd64 when platforms are listed.
    while True:
        if not manifests:
            raise ParamError.one("src", "OCI index lists no manifest")
        pick = next(
            (m for m in manifests if (m.get("platform") or {}).get("architecture") == "amd64"),
            manifests[0],
        )
        doc = json.load(open(_blob(layout, pick["digest"])))
        if pick.get("mediaType") in _INDEX_TYPES or "manifests" in doc:
            manifests = doc.get("manifests") or []
            continue
        return [
            (_blob(layout, layer["digest"]), layer.get("mediaType", "")) for layer in doc["layers"]
        ]


def _apply_layer(blob: str, root: str) -> None:
    with tempfile.TemporaryDirectory(prefix="crl-layer-") as tmp:
        plain = _plain_tar(blob, tmp)
        # Whiteouts first: they delete what lower layers put there, never this layer's files.
        with tarfile.open(plain, "r:") as tar:
            for member in tar:
                rel = unpack.safe_name(member.name)
                if rel is None:
                    continue
                base = os.path.basename(rel)
                parent = os.path.join(root, os.path.dirname(rel))
                if os.path.commonpath([root, os.path.realpath(parent)]) != root:
                    raise ParamError.one("src", f"layer member escapes the root: '{rel}'")
                if base == ".wh..wh..opq":
                    if os.path.isdir(parent):
                        for entry in os.listdir(parent):
                            _remove(os.path.join(parent, entry))
                elif base.startswith(".wh."):
                    _remove(os.path.join(parent, base[4:]))
            # Then the layer itself, without the markers, through the one safe extractor.
            clean = os.path.join(tmp, "clean.tar")
            with tarfile.open(clean, "w", format=tarfile.PAX_FORMAT) as dst:
                for member in tar.getmembers():
                    if os.path.basename(member.name.rstrip("/")).startswith(".wh."):
                        continue
                    dst.addfile(member, tar.extractfile(member) if member.isfile() else None)
        unpack.extract(clean, root, allow_devices=False)


def _plain_tar(blob: str, tmp: str) -> str:
    """The layer as an uncompressed tar (gzip, zstd or none, told by magic bytes)."""
    with open(blob, "rb") as fh:
        magic = fh.read(4)
    if magic[:2] == b"\x1f\x8b":
        out = os.path.join(tmp, "layer.tar")
        with gzip.open(blob) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return out
    if magic == b"\x28\xb5\x2f\xfd":
        out = os.path.join(tmp, "layer.tar")
        with open(blob, "rb") as src, open(out, "wb") as dst:
            proc = subprocess.run(
                ["zstd", "-dc"], stdin=src, stdout=dst, stderr=subprocess.PIPE,
                timeout=unpack.UNPACK_TIMEOUT, check=False,
            )  # fmt: skip
        if proc.returncode:
            raise CommandFailed(cmd="zstd -dc", stderr=proc.stderr.decode(errors="replace"))
        return out
    return blob


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
