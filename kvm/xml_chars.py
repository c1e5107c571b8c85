"""Serial ports and the guest agent channel.

`serialN: socket` is a UNIX socket at RUN_DIR/VMID.serialN, as Proxmox's
/var/run/qemu-server/VMID.serialN (`qm terminal` connects there). Its output
is also written to RUN_DIR/VMID.serialN.log, truncated at each start, so a
boot can be read after the fact without anybody attached.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg
from corral.kvm.xml_base import Facts, alias, el

AGENT_CHANNEL = "org.qemu.guest_agent.0"


def serial_socket(facts: Facts, index: int) -> str:
    return os.path.join(facts.run_dir, f"{facts.vmid}.serial{index}")


def serial_log(facts: Facts, index: int) -> str:
    return serial_socket(facts, index) + ".log"


def serials(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    out = []
    for i in range(cfg.MAX_SERIAL):
        value = config.get(f"serial{i}")
        if not value:
            continue
        if value == "socket":
            node = el(None, "serial", type="unix")
            el(node, "source", mode="bind", path=serial_socket(facts, i))
            el(node, "log", file=serial_log(facts, i), append="off")
        else:
            node = el(None, "serial", type="dev")
            el(node, "source", path=str(value))
        target = el(node, "target", type="isa-serial", port=i)
        el(target, "model", name="isa-serial")
        el(node, "alias", name=alias(f"serial{i}"))
        out.append(node)
    return out


def agent(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    parsed = cfg.parse_opt(config, "agent", cfg.AGENT)
    if not parsed.get("enabled"):
        return []
    if parsed.get("type") == "isa":
        raise ParamError.one("agent", "type=isa is not supported here (use virtio)")
    node = el(None, "channel", type="unix")
    el(node, "source", mode="bind")  # libvirt picks the path in its channel dir
    el(node, "target", type="virtio", name=AGENT_CHANNEL)
    return [node]
