"""cloud-init NoCloud seed: an ISO labelled `cidata` with user-data, meta-data
and network-config, written in Python with pycdlib (no genisoimage needed).

Built from the VM's `ci*`/`ipconfigN`/`sshkeys`/`nameserver`/`searchdomain`
keys at every start, as Proxmox regenerates its cloud-init drive, and
attached as a CD-ROM (ide2 unless a disk key says `STORAGE:cloudinit`). The
instance-id is a hash of the content, so cloud-init in the guest applies a
changed config once, at the next boot. Passwords are written hashed.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import re
import warnings
from typing import Any
from urllib.parse import unquote

import pycdlib
import yaml

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg

DEFAULT_SLOT = "ide2"
FILES = (  # (ISO9660 level-1 name, Rock Ridge / Joliet name)
    ("USERDATA.;1", "user-data"),
    ("METADATA.;1", "meta-data"),
    ("NETCONF.;1", "network-config"),
)


def slot(config: dict[str, Any]) -> str | None:
    """The disk key that carries the seed, None without cloud-init keys."""
    if not cfg.has_cloudinit(config):
        return None
    for key, disk in cfg.parse_disks(config).items():
        if cfg.is_cloudinit(disk):
            return key
    if config.get(DEFAULT_SLOT):
        raise ParamError.one(
            DEFAULT_SLOT,
            f"{DEFAULT_SLOT} is in use; cloud-init needs a drive: set one to STORAGE:cloudinit",
        )
    return DEFAULT_SLOT


def hostname(config: dict[str, Any], vmid: int) -> str:
    return str(config.get("name") or f"vm{vmid}")


_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _hash_password(password: str, vmid: int) -> str:
    """SHA-512-crypt. The salt is derived from (vmid, password), so the same
    password gives the same user-data and the instance-id only changes when
    the config does (a random salt would re-run cloud-init at every boot)."""
    if password.startswith("$"):
        return password  # already crypt()ed (Proxmox stores it so)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated, still the only stdlib SHA-512-crypt in 3.11

    digest = hashlib.sha256(f"corral-ci:{vmid}:{password}".encode()).digest()
    salt = "".join(_SALT_CHARS[b % 64] for b in digest[:16])
    return crypt.crypt(password, f"$6${salt}")


def user_data(config: dict[str, Any], vmid: int) -> str:
    name = hostname(config, vmid)
    doc: dict[str, Any] = {"hostname": name, "manage_etc_hosts": True}
    domains = _split(config.get("searchdomain"))
    if domains:
        doc["fqdn"] = f"{name}.{domains[0]}"
    if config.get("ciuser"):
        doc["user"] = config["ciuser"]
    if config.get("cipassword"):
        doc["password"] = _hash_password(str(config["cipassword"]), vmid)
        doc["chpasswd"] = {"expire": False}
    keys = [k.strip() for k in unquote(str(config.get("sshkeys") or "")).splitlines()]
    if any(keys):
        doc["ssh_authorized_keys"] = [k for k in keys if k]
    doc["users"] = ["default"]
    doc["package_upgrade"] = False  # a datacenter without internet: never by default
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def network_config(config: dict[str, Any], macs: dict[int, str]) -> str:
    """Version 1 network config: one physical NIC per netN, its ipconfigN subnets."""
    entries: list[dict[str, Any]] = []
    ipconfigs = cfg.parse_ipconfigs(config)
    for index, net in cfg.parse_nets(config).items():
        mac = str(net.get("macaddr") or macs.get(index) or "").lower()
        entry: dict[str, Any] = {"type": "physical", "name": f"eth{index}", "mac_address": mac}
        subnets = _subnets(ipconfigs.get(index, {}))
        if subnets:
            entry["subnets"] = subnets
        entries.append(entry)
    for index in ipconfigs:
        if index not in cfg.parse_nets(config):
            raise ParamError.one(f"ipconfig{index}", f"net{index} does not exist")
    servers, search = _split(config.get("nameserver")), _split(config.get("searchdomain"))
    if servers or search:
        dns: dict[str, Any] = {"type": "nameserver"}
        if servers:
            dns["address"] = servers
        if search:
            dns["search"] = search
        entries.append(dns)
    doc = {"version": 1, "config": entries}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _subnets(ipc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ip = ipc.get("ip")
    if ip == "dhcp":
        out.append({"type": "dhcp4"})
    elif ip:
        iface = ipaddress.IPv4Interface(ip)
        sub: dict[str, Any] = {
            "type": "static",
            "address": str(iface.ip),
            "netmask": str(iface.netmask),
        }
        if ipc.get("gw"):
            sub["gateway"] = ipc["gw"]
        out.append(sub)
    ip6 = ipc.get("ip6")
    if ip6 == "dhcp":
        out.append({"type": "dhcp6"})
    elif ip6 == "auto":
        out.append({"type": "ipv6_slaac"})
    elif ip6:
        sub6: dict[str, Any] = {"type": "static6", "address": ip6}
        if ipc.get("gw6"):
            sub6["gateway"] = ipc["gw6"]
        out.append(sub6)
    return out


def meta_data(config: dict[str, Any], vmid: int, content: str) -> str:
    instance = hashlib.sha1(content.encode()).hexdigest()
    return f"instance-id: {instance}\nlocal-hostname: {hostname(config, vmid)}\n"


def seed_files(config: dict[str, Any], vmid: int, macs: dict[int, str]) -> dict[str, str]:
    """{"user-data", "meta-data", "network-config"} texts."""
    user = user_data(config, vmid)
    net = network_config(config, macs)
    return {
        "user-data": user,
        "meta-data": meta_data(config, vmid, user + net),
        "network-config": net,
    }


def build_iso(files: dict[str, str]) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident="cidata", joliet=3, rock_ridge="1.09")
    try:
        for iso_name, name in FILES:
            data = files[name].encode()
            iso.add_fp(
                io.BytesIO(data), len(data), f"/{iso_name}", rr_name=name, joliet_path=f"/{name}"
            )
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def read_iso(data: bytes) -> dict[str, str]:
    """The seed's files by their Rock Ridge names (for tests and diagnostics)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        out = {}
        for _, name in FILES:
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue().decode()
        out["volume_id"] = iso.pvd.volume_identifier.decode().strip()
        return out
    finally:
        iso.close()


def _split(text: Any) -> list[str]:
    return [x for x in re.split(r"[,; ]+", str(text or "").strip()) if x]
