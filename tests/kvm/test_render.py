"""Domain XML against golden files: tests/golden/kvm/NAME.json -> NAME.xml.

`CORRAL_REGEN_GOLDEN=1` rewrites the expected files (review the diff); a
missing expected file is written out and the test fails so it gets reviewed.
Every golden XML is also defined (with libvirt's schema validation) in the
test embed root, so the files pin XML that libvirt really accepts.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg
from corral.kvm.libvirt_conn import Libvirt
from corral.kvm.xml_base import Facts, letters
from corral.kvm.xml_domain import render
from tests.kvm.conftest import PREFIX
from tests.util import assert_golden

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "kvm"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
VALIDATE = libvirt.VIR_DOMAIN_DEFINE_VALIDATE
FACTS = Facts(vmid=100, name="corral-100", uuid=str(uuid.UUID(int=100)), run_dir="/r")


def _render(case: dict[str, Any]) -> str:
    facts = dict(case["facts"])
    facts["macs"] = {int(k): v for k, v in facts.get("macs", {}).items()}
    config = cfg.SCHEMA.validate(case["config"])
    return render(config, case["disks"], Facts(**facts))


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 8


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    case = json.loads((GOLDEN / f"{name}.json").read_text())
    got = _render(case)
    expected = GOLDEN / f"{name}.xml"
    assert_golden(got, expected)


def test_libvirt_accepts_every_golden_xml(embed_uri: str) -> None:
    lv = Libvirt(embed_uri)
    try:
        for n, name in enumerate(CASES):
            xml = (GOLDEN / f"{name}.xml").read_text()
            xml = re.sub(r"<name>[^<]*</name>", f"<name>{PREFIX}golden-{n}</name>", xml, count=1)
            old = re.search(r"<uuid>([^<]*)</uuid>", xml)
            assert old is not None
            xml = xml.replace(old.group(1), str(uuid.uuid4()))  # also smbios1's copy
            dom = lv.run(name, lv.conn().defineXMLFlags, xml, VALIDATE, timeout=60)
            try:
                live = dom.XMLDesc(0)
                assert "ua-" in live or "<disk" not in xml  # user aliases survive
            finally:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    finally:
        lv.close()


def test_target_names_never_collide() -> None:
    from corral.kvm.xml_disks import target_dev

    for machine in ("pc", "q35"):
        names = [target_dev(k, {"machine": machine}) for k in cfg.DISK_KEYS]
        assert len(set(names)) == len(names)
    assert [letters(i) for i in (0, 25, 26, 27, 51, 52)] == ["a", "z", "aa", "ab", "az", "ba"]


def _bad(config: dict[str, Any], disks: dict[str, Any] | None = None, **facts: Any) -> dict:
    with pytest.raises(ParamError) as err:
        render(cfg.SCHEMA.validate(config), disks or {}, Facts(**{**FACTS.__dict__, **facts}))
    return err.value.errors


def test_rules_the_renderers_enforce() -> None:
    assert "vcpus" in _bad({"cores": 2, "vcpus": 3})
    assert "balloon" in _bad({"memory": 512, "balloon": 1024})
    assert "cpu" in _bad({"cpu": "host", "kvm": 0})
    assert "virtio0" in _bad({"virtio0": "none,media=cdrom"})
    assert "boot" in _bad({"boot": "order=scsi0"})
    assert "net0" in _bad({"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=5"})
    assert "net0" in _bad({"net0": "e1000=BC:24:11:00:00:01,mtu=9000"})
    assert "efidisk0" in _bad({"efidisk0": "local:100/vm-100-disk-1.raw"})
    assert "efidisk0" in _bad(
        {"bios": "ovmf", "efidisk0": "local:100/vm-100-disk-1.raw,pre-enrolled-keys=1"},
        {"efidisk0": {"kind": "file", "path": "/x", "format": "raw"}},
    )
    assert "cmdline" in _bad({"cmdline": "quiet"})
    assert "vga" in _bad({"vga": "serial1"})
    assert "scsi0" in _bad({"scsi0": "local:100/vm-100-disk-0.raw"})  # not resolved
    assert "virtio0" in _bad({"virtio0": "c:vm-100-disk-0,mbps=5,mbps_rd=5"},
                             {"virtio0": {"kind": "file", "path": "/x"}})  # fmt: skip
    rbd = {"kind": "rbd", "pool": "p", "image": "vm-100-disk-0", "user": "joe"}
    assert "virtio0" in _bad({"virtio0": "c:vm-100-disk-0"}, {"virtio0": rbd})


def test_tcg_is_domain_type_qemu_and_kvm_is_kvm() -> None:
    tcg = render(cfg.SCHEMA.validate({"kvm": 0}), {}, FACTS)
    assert tcg.startswith('<domain xmlns:corral="https://corral.invalid/xmlns/kvm/1" type="qemu">')
    assert 'type="kvm">' in render({}, {}, FACTS).splitlines()[0]


@pytest.mark.parametrize("name", CASES)
def test_a_parsed_config_renders_the_same_and_parses_each_key_once(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver parses a VM's config once (cfg.VmConfig) before rendering; the
    renderers, MACs and cloud-init read that instead of parsing netN/diskN again."""
    case = json.loads((GOLDEN / f"{name}.json").read_text())
    facts = dict(case["facts"])
    facts["macs"] = {int(k): v for k, v in facts.get("macs", {}).items()}
    config = cfg.SCHEMA.validate(case["config"])
    calls: list[str] = []
    real = cfg.parse

    def counted(key: str, fmt: Any, text: str) -> dict[str, Any]:
        calls.append(key)
        return real(key, fmt, text)

    monkeypatch.setattr(cfg, "parse", counted)
    vm = cfg.VmConfig.parse(config)
    got = render(vm, case["disks"], Facts(**facts))
    cfg.parse_nets(vm)
    if cfg.has_cloudinit(vm):
        from corral.kvm import cloudinit

        cloudinit.network_config(vm, facts["macs"])
    assert got == (GOLDEN / f"{name}.xml").read_text()
    device = re.compile(r"(net|ipconfig|ide|sata|scsi|virtio)\d+")
    repeated = sorted({k for k in calls if device.fullmatch(k) and calls.count(k) > 1})
    assert repeated == [], repeated
    with pytest.raises(TypeError):
        vm["memory"] = 1
