"""Node bridges (pyroute2) and stable guest MACs, shared by containers and VMs.

A node creates the bridges its guests name (`vmbr0` by default). MACs are
derived from (seed, vmid, index) so a guest keeps its address across
re-creation of its config and between nodes of one cluster (the seed is the
cluster's), locally administered and unicast as any generated MAC must be.

VLAN tags: this kernel has neither 8021q nor bridge VLAN filtering (setting
`vlan_filtering` answers EOPNOTSUPP); `vlan_filtering_supported()` probes it
once so drivers can refuse `tag=` with a clear message instead of starting a
guest on the untagged LAN.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from corral.cluster.errors import CommandFailed, ParamError

DEFAULT_BRIDGE = "vmbr0"
_IFNAME = re.compile(r"[A-Za-z0-9][-_.A-Za-z0-9]{0,14}")


def check_ifname(name: str, param: str = "bridge") -> str:
    if not _IFNAME.fullmatch(name or ""):
        raise ParamError.one(param, f"invalid interface name '{name}'")
    return name


def guest_mac(vmid: int, index: int, seed: str = "") -> str:
    """A stable MAC for interface `index` of guest `vmid` (locally administered, unicast)."""
    digest = hashlib.sha256(f"corral-mac:{seed}:{vmid}:{index}".encode()).digest()
    first = (digest[0] | 0x02) & 0xFE  # set "local" bit, clear "multicast" bit
    return ":".join(f"{b:02X}" for b in (first, *digest[1:6]))


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_bridge(name: str = DEFAULT_BRIDGE, *, address: str | None = None) -> int:
    """Create the bridge if missing, bring it up, add `address` (CIDR) if given.

    Idempotent; returns the interface index.
    """
    check_ifname(name)
    iface = ipaddress.ip_interface(address) if address else None
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        try:
            if idx is None:
                try:
                    ipr.link("add", ifname=name, kind="bridge")
                except NetlinkError as err:
                    if err.code != 17:  # EEXIST: another worker made it first
                        raise
                idx = _index(ipr, name)
                assert idx is not None
            elif _kind(ipr, idx) != "bridge":
                raise ParamError.one("bridge", f"interface '{name}' exists and is not a bridge")
            ipr.link("set", index=idx, state="up")
            if iface is not None and not _has_addr(ipr, idx, iface):
                ipr.addr(
                    "add",
                    index=idx,
                    address=str(iface.ip),
                    prefixlen=iface.network.prefixlen,
                )
        except NetlinkError as err:
            raise CommandFailed(cmd=f"netlink: ensure bridge {name}", stderr=str(err)) from err
        return idx


def _kind(ipr: IPRoute, idx: int) -> str | None:
    link = ipr.get_links(idx)[0]
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _has_addr(ipr: IPRoute, idx: int, iface: Any) -> bool:
    for addr in ipr.get_addr(index=idx):
        if addr.get_attr("IFA_ADDRESS") == str(iface.ip):
            return True
    return False


def list_bridges() -> list[dict[str, Any]]:
    """[{name, index, state, mtu, addresses: [CIDR...], ports: [ifname...]}]."""
    out: list[dict[str, Any]] = []
    with IPRoute() as ipr:
        links = ipr.get_links()
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
        for link in links:
            info = link.get_attr("IFLA_LINKINFO")
            if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
                continue
            idx = link["index"]
            addrs = [
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)
            ]
            ports = [names.get(p["index"], "") for p in links if p.get_attr("IFLA_MASTER") == idx]
            out.append(
                {
                    "name": link.get_attr("IFLA_IFNAME"),
                    "index": idx,
                    "state": link.get_attr("IFLA_OPERSTATE"),
                    "mtu": link.get_attr("IFLA_MTU"),
                    "addresses": addrs,
                    "ports": sorted(ports),
                }
            )
    return out


def delete_bridge(name: str) -> None:
    """Remove a bridge (tests and lab teardown). Missing is not an error."""
    check_ifname(name)
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        if idx is not None:
            ipr.link("del", index=idx)


def delete_link(name: str) -> None:
    """Remove any interface, e.g. a veth left by a crashed guest. Missing is fine."""
    check_ifname(name, "iface")
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        if idx is not None:
            try:
                ipr.link("del", index=idx)
            except NetlinkError as err:
                if err.code != 19:  # ENODEV: gone with its peer meanwhile
                    raise


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return _index(ipr, name) is not None


def link_stats(name: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of a host interface; (0, 0) when it is gone."""
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return 0, 0
        stats = ipr.get_links(idx)[0].get_attr("IFLA_STATS64")
        if stats is None:
            return 0, 0
        return int(stats["rx_bytes"]), int(stats["tx_bytes"])


@functools.cache
def vlan_filtering_supported() -> bool:
    """Can a bridge here filter VLANs? Probed once on a throw-away bridge."""
    probe = "crlvlanprobe0"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=probe, kind="bridge")
        except NetlinkError:
            return False
        try:
            idx = _index(ipr, probe)
            ipr.link("set", index=idx, kind="bridge", br_vlan_filtering=1)
            return True
        except NetlinkError:
            return False
        finally:
            idx = _index(ipr, probe)
            if idx is not None:
                ipr.link("del", index=idx)
