"""The whole domain XML, assembled from the device-family renderers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from corral.kvm import config as cfg
from corral.kvm import xml_chars, xml_cpu, xml_disks, xml_firmware, xml_graphics, xml_nics
from corral.kvm.xml_base import Disks, Facts, el

NS = "https://corral.invalid/xmlns/kvm/1"
ET.register_namespace("corral", NS)


def domain_type(config: dict[str, Any]) -> str:
    """`kvm: 0` runs under TCG (`<domain type='qemu'>`)."""
    return "kvm" if cfg.value(config, "kvm") else "qemu"


def render(config: dict[str, Any], disks: Disks, facts: Facts) -> str:
    root = el(None, "domain", type=domain_type(config))
    el(root, "name", facts.name)
    el(root, "uuid", xml_firmware.domain_uuid(config, facts))
    el(root, "title", str(config.get("name") or f"VM {facts.vmid}"))
    meta = el(root, "metadata")
    el(meta, f"{{{NS}}}guest", vmid=facts.vmid, node=facts.node or None)
    parts = [
        xml_firmware.genid(config, facts),
        xml_cpu.memory(config, facts),
        xml_cpu.vcpu(config, facts),
        xml_disks.iothreads(config, facts),
        xml_firmware.sysinfo(config, facts),
        xml_firmware.os_section(config, disks, facts),
        xml_cpu.features(config, facts),
        xml_cpu.cpu(config, facts),
        xml_cpu.clock(config, facts),
    ]
    for part in parts:
        root.extend(part)
    el(root, "on_poweroff", "destroy")
    el(root, "on_reboot", "restart")
    el(root, "on_crash", "destroy")
    devices = el(root, "devices")
    el(devices, "emulator", facts.emulator)
    for family in (
        xml_disks.disk_devices(config, disks, facts),
        xml_nics.nic_devices(config, facts),
        xml_chars.serials(config, facts),
        xml_chars.agent(config, facts),
        xml_graphics.display(config, facts),
        xml_graphics.inputs(config, facts),
        xml_graphics.balloon(config, facts),
    ):
        devices.extend(family)
    ET.indent(root, "  ")
    return ET.tostring(root, encoding="unicode") + "\n"
