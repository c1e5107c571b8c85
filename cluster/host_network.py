"""The node's network interfaces as the kernel has them (netlink), in Proxmox's shape.

Proxmox reads /etc/network/interfaces and lets the operator edit it (pending until
applied with ifupdown2). corral configures no host networking beyond the bridges its
guests need (cluster.bridges), so this view is read-only and shows what is, not a
configuration file: `method` is "static" when the interface has an address and
"manual" when not, `autostart` is not reported. Guest ports (a CT's `vethNiM`, a
VM's `tapN...`) and loopback are left out, as in Proxmox's list.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pyroute2 import IPRoute

from corral.cluster.errors import NotFound

_GUEST_PORT = re.compile(r"^(veth\d+i\d+|tap\d+i\d+|fwbr\d+i\d+|fwpr\d+p\d+|fwln\d+i\d+)$")
BRIDGE_TYPES = ("bridge",)
IFF_UP = 0x1


def _kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_KIND")


def _type(kind: str | None) -> str:
    if kind in ("bridge", "bond", "vlan"):
        return str(kind)
    if kind is None:
        return "eth"  # no link kind: a physical NIC (or one handed in from outside)
    return "unknown"  # veth, dummy, vxlan, tun...: `link-type` names the kernel's kind


def interfaces() -> list[dict[str, Any]]:
    """Every interface but loopback and guest ports, ordered by kernel index."""
    with IPRoute() as ip:
        links = ip.get_links()
        addrs = ip.get_addr()
        gateways = {
            (r["family"], r.get_attr("RTA_OIF")): r.get_attr("RTA_GATEWAY")
            for r in ip.get_default_routes()
        }
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
    rows = []
    for link in links:
        name = str(names[link["index"]])
        kind = _kind(link)
        if name == "lo" or _GUEST_PORT.match(name):
            continue
        row: dict[str, Any] = {
            "iface": name,
            "type": _type(kind),
            "active": 1 if link["flags"] & IFF_UP else 0,
            "exists": 1,
            "priority": link["index"],
            "mtu": link.get_attr("IFLA_MTU"),
            "families": [],
            "method": "manual",
            "method6": "manual",
        }
        if kind is not None:
            row["link-type"] = kind
        ports = sorted(
            str(names[x["index"]]) for x in links if x.get_attr("IFLA_MASTER") == link["index"]
        )
        if kind == "bridge":
            row["bridge_ports"] = " ".join(ports)
        elif kind == "bond":
            row["slaves"] = " ".join(ports)
        elif kind == "vlan":
            parent = link.get_attr("IFLA_LINK")
            if parent in names:
                row["vlan-raw-device"] = names[parent]
        _addresses(row, link["index"], addrs, gateways)
        rows.append(row)
    return rows


def _addresses(row: dict[str, Any], index: int, addrs: list[Any], gateways: dict) -> None:
    for a in addrs:
        if a["index"] != index:
            continue
        address = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        iface = ipaddress.ip_interface(f"{address}/{a['prefixlen']}")
        if iface.version == 4 and "address" not in row:
            row.update(
                address=str(iface.ip),
                netmask=str(iface.netmask),
                cidr=str(iface.with_prefixlen),
                method="static",
            )
            row["families"].append("inet")
            gw = gateways.get((2, index))
            if gw:
                row["gateway"] = gw
        elif iface.version == 6 and "address6" not in row and not iface.ip.is_link_local:
            row.update(
                address6=str(iface.ip),
                netmask6=a["prefixlen"],
                cidr6=str(iface.with_prefixlen),
                method6="static",
            )
            row["families"].append("inet6")
            gw = gateways.get((10, index))
            if gw:
                row["gateway6"] = gw


def interface(name: str) -> dict[str, Any]:
    for row in interfaces():
        if row["iface"] == name:
            return row
    raise NotFound(f"interface '{name}' does not exist")


def filtered(kind: str | None) -> list[dict[str, Any]]:
    """Proxmox's `type` filter: an interface type, or any_bridge/any_local_bridge."""
    rows = interfaces()
    if kind is None:
        return rows
    if kind in ("any_bridge", "any_local_bridge"):
        return [r for r in rows if r["type"] in BRIDGE_TYPES]
    return [r for r in rows if r["type"] == kind]
