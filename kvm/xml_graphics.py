"""Display (VNC on the node's loopback, password-protected), pointer, USB, balloon.

VNC listens on `Facts.vnc_listen` (loopback by default) with a password the
driver sets; `vncproxy` hands out a fresh one as the ticket. `vga:
serialN` means no display at all: the serial port is the console.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg
from corral.kvm.xml_base import Facts, el

VIDEO = {"std": "vga", "cirrus": "cirrus", "vmware": "vmvga", "qxl": "qxl", "virtio": "virtio"}
BALLOON_PERIOD = 2  # seconds between guest memory stats (Proxmox polls as often)


def vga_type(config: dict[str, Any]) -> str:
    return str(cfg.parse_opt(config, "vga", cfg.VGA).get("type") or "std")


def has_vnc(config: dict[str, Any]) -> bool:
    return vga_type(config) in VIDEO


def display(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    vga = cfg.parse_opt(config, "vga", cfg.VGA)
    kind = vga_type(config)
    if kind not in VIDEO:
        if kind.startswith("serial") and not config.get(kind):
            raise ParamError.one("vga", f"vga: {kind} needs {kind} to be configured")
        video = el(None, "video")
        el(video, "model", type="none")
        return [video]
    graphics = el(
        None, "graphics", type="vnc", port="-1", autoport="yes", passwd=facts.vnc_password or None
    )
    el(graphics, "listen", type="address", address=facts.vnc_listen)
    video = el(None, "video")
    memory = vga.get("memory")
    kib = int(memory) * 1024 if memory else None
    el(
        video,
        "model",
        type=VIDEO[kind],
        vram=kib if kind != "qxl" else None,
        vgamem=kib if kind == "qxl" else None,
        heads=1,
        primary="yes",
    )
    return [graphics, video]


def inputs(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    if cfg.value(config, "tablet"):
        return [el(None, "input", type="tablet", bus="usb")]
    # No USB device at all: no controller to emulate (it costs under TCG).
    return [el(None, "controller", type="usb", model="none")]


def balloon(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    if config.get("balloon") == 0:
        return [el(None, "memballoon", model="none")]
    node = el(None, "memballoon", model="virtio")
    el(node, "stats", period=BALLOON_PERIOD)
    return [node]
