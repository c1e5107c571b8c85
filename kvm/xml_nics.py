"""Network cards: a tap on a Linux bridge, or user networking without a bridge.

Taps are named as Proxmox names them (`tap{vmid}i{index}`), so traffic
counters and bridge ports are found by name on the host.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg
from corral.kvm.xml_base import Facts, alias, boot_order, el

MODELS = {
    "virtio": "virtio",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "rtl8139",
    "vmxnet3": "vmxnet3",
}


def tap_name(vmid: int, index: int) -> str:
    return f"tap{vmid}i{index}"


def mac_of(index: int, net: dict[str, Any], facts: Facts) -> str:
    mac = net.get("macaddr") or facts.macs.get(index)
    if not mac:
        raise ParamError.one(f"net{index}", "no MAC address")
    return str(mac).lower()


def nic_devices(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    order = boot_order(config)
    return [
        interface(i, net, facts, order.get(f"net{i}")) for i, net in cfg.parse_nets(config).items()
    ]


def interface(index: int, net: dict[str, Any], facts: Facts, boot: int | None = None) -> ET.Element:
    """One <interface>; also what the driver hands to updateDeviceFlags for live changes."""
    key = f"net{index}"
    if net.get("tag"):
        raise ParamError.one(
            key, "VLAN tags need bridge VLAN filtering, which this node does not offer"
        )
    bridge = net.get("bridge")
    node = el(None, "interface", type="bridge" if bridge else "user")
    el(node, "mac", address=mac_of(index, net, facts))
    if bridge:
        el(node, "source", bridge=bridge)
        el(node, "target", dev=tap_name(facts.vmid, index))
    el(node, "model", type=MODELS[net["model"]])
    if net.get("queues") and net["model"] == "virtio":
        el(node, "driver", name="qemu", queues=net["queues"])
    if net.get("mtu") and net["mtu"] != 1:  # 1: take the bridge's MTU (the default)
        if net["model"] != "virtio":
            raise ParamError.one(key, "mtu is only supported on virtio NICs")
        el(node, "mtu", size=net["mtu"])
    if net.get("rate"):
        kbytes = max(1, int(float(net["rate"]) * 1024))  # MB/s -> KiB/s, both ways
        bw = el(node, "bandwidth")
        el(bw, "inbound", average=kbytes)
        el(bw, "outbound", average=kbytes)
    el(node, "link", state="down" if net.get("link_down") else "up")
    if boot is not None:
        el(node, "boot", order=boot)
    el(node, "alias", name=alias(key))
    return node
