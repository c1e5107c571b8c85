"""CPU model, topology, vCPUs and memory."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg
from corral.kvm.xml_base import Facts, el

DEFAULT_CPU = "kvm64"  # Proxmox's default cputype

# Proxmox's x86-64 micro-architecture levels are qemu64 plus flags (they are
# not QEMU model names).
_V2 = ("cx16", "lahf_lm", "popcnt", "sse4.1", "sse4.2", "ssse3")
_V3 = _V2 + ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
_V4 = _V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
LEVELS: dict[str, tuple[str, ...]] = {
    "x86-64-v2": _V2,
    "x86-64-v2-AES": _V2 + ("aes",),
    "x86-64-v3": _V3,
    "x86-64-v4": _V4,
}


def topology(config: dict[str, Any]) -> tuple[int, int, int]:
    """(sockets, cores, vcpus at boot)."""
    sockets = int(cfg.value(config, "sockets"))
    cores = int(cfg.value(config, "cores"))
    total = sockets * cores
    vcpus = int(config.get("vcpus") or total)
    if vcpus > total:
        raise ParamError.one("vcpus", f"at most sockets*cores ({total}) vcpus")
    return sockets, cores, vcpus


def memory(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    mib = int(cfg.value(config, "memory"))
    balloon = config.get("balloon")
    if balloon is not None and int(balloon) > mib:
        raise ParamError.one("balloon", f"balloon ({balloon} MiB) is larger than memory ({mib})")
    # The guest boots with all of `memory`; `balloon` is the floor a host may
    # reclaim down to (Proxmox's auto-ballooning), set live by the driver.
    return [
        el(None, "memory", str(mib), unit="MiB"),
        el(None, "currentMemory", str(mib), unit="MiB"),
    ]


def vcpu(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    sockets, cores, vcpus = topology(config)
    total = sockets * cores
    return [
        el(
            None,
            "vcpu",
            str(total),
            placement="static",
            current=str(vcpus) if vcpus != total else None,
        )
    ]


def cpu(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    parsed = cfg.parse_opt(config, "cpu", cfg.CPU)
    model = str(parsed.get("cputype") or DEFAULT_CPU)
    kvm = bool(cfg.value(config, "kvm"))
    flags = [f for f in str(parsed.get("flags") or "").split(";") if f]
    if model == "host":
        if not kvm:
            raise ParamError.one("cpu", "cpu type 'host' needs KVM (kvm: 1)")
        node = el(None, "cpu", mode="host-passthrough", check="none", migratable="on")
    elif model == "max":
        node = el(None, "cpu", mode="maximum", check="none", migratable="on")
    else:
        # check='none': QEMU itself decides which features it can provide
        # (TCG lacks some of a real CPU's), as Proxmox's `-cpu` does.
        node = el(None, "cpu", mode="custom", match="exact", check="none")
        base = "qemu64" if model in LEVELS else model
        el(node, "model", base, fallback="forbid")
        flags = [f"+{f}" for f in LEVELS.get(model, ())] + flags
    sockets, cores, _ = topology(config)
    el(node, "topology", sockets=sockets, dies=1, cores=cores, threads=1)
    seen: dict[str, str] = {}
    for flag in flags:
        seen[flag[1:]] = "require" if flag[0] == "+" else "disable"  # later ones win
    for name, policy in seen.items():
        el(node, "feature", policy=policy, name=name)
    if cfg.value(config, "numa"):
        _numa(node, config)
    if parsed.get("hidden"):
        if not kvm:
            raise ParamError.one("cpu", "'hidden' hides KVM, which this VM does not use")
    return [node]


def _numa(node: ET.Element, config: dict[str, Any]) -> None:
    """One NUMA node per socket, memory split evenly (the first takes the rest)."""
    sockets, cores, _ = topology(config)
    mib = int(cfg.value(config, "memory"))
    if mib < sockets:
        raise ParamError.one("numa", "less memory than NUMA nodes")
    numa = el(node, "numa")
    for i in range(sockets):
        share = mib // sockets + (mib % sockets if i == 0 else 0)
        first, last = i * cores, (i + 1) * cores - 1
        cpus = str(first) if first == last else f"{first}-{last}"
        el(numa, "cell", id=i, cpus=cpus, memory=share, unit="MiB")


def features(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    node = el(None, "features")
    el(node, "acpi")
    el(node, "apic")
    if cfg.parse_opt(config, "efidisk0", cfg.EFIDISK).get("pre-enrolled-keys"):
        el(node, "smm", state="on")  # secure boot firmware needs SMM
    if cfg.parse_opt(config, "cpu", cfg.CPU).get("hidden"):
        kvm = el(node, "kvm")
        el(kvm, "hidden", state="on")
    return [node]


def clock(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    windows = str(cfg.value(config, "ostype")).startswith("w")
    return [el(None, "clock", offset="localtime" if windows else "utc")]
