"""VM config validation: declared keys, property strings, create() that leaves
nothing behind when it fails, node limits (memory, KVM) as clear errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from corral.cluster import hostinfo
from corral.cluster.errors import ParamError
from corral.kvm import config as cfg
from corral.kvm.driver import KVM_MISSING, QemuDriver, check_kvm, check_memory
from corral.storage.volumes import Volumes
from tests.kvm.conftest import NOIMAGES, STORAGE, images, new_vmid, short_tmp

DATA = Path(__file__).resolve().parent / "data"


def errors(raw: dict) -> dict[str, str]:
    with pytest.raises(ParamError) as err:
        cfg.SCHEMA.validate(raw)
    return err.value.errors


def test_unknown_key_is_named() -> None:
    assert set(errors({"memory": 512, "colour": "red"})) == {"colour"}


@pytest.mark.parametrize(
    "net0,reason",
    [
        ("virtio=zz:zz:zz:zz:zz:zz,bridge=vmbr0", "MAC"),
        ("bridge=vmbr0", "missing key 'model'"),
        ("virtio,bridge=vmbr0,speed=10", "unknown key 'speed'"),
        ("virtio,e1000", "duplicate key"),
        ("virtio=01:00:00:00:00:01", "multicast"),
        ("ne2k_pci,bridge=vmbr0", "without key"),
        ("virtio,bridge=vmbr0;rm", "regex"),
        ("virtio,tag=5000", "maximum"),
    ],
)
def test_malformed_net0(net0: str, reason: str) -> None:
    errs = errors({"net0": net0})
    assert list(errs) == ["net0"] and reason in errs["net0"], errs


@pytest.mark.parametrize(
    "key,value",
    [
        ("scsi0", "local:100/../../etc/passwd"),
        ("scsi0", "local:1,cache=maybe"),
        ("virtio16", "local:1"),  # virtio0..15 only
        ("ide4", "local:1"),
        ("serial0", "/tmp/x"),
        ("serial0", "/dev/../etc/shadow"),
        ("cpu", "host,flags=aes"),
        ("boot", "order=scsi0;floppy0"),
        ("machine", "pc;reboot"),
        ("memory", "lots"),
        ("memory", 8),
        ("bios", "coreboot"),
        ("kernel", "/boot/vmlinuz"),
        ("cmdline", "console=ttyS0\ninit=/bin/sh"),
        ("sshkeys", "not-a-key"),
        ("ipconfig0", "ip=10.0.0.1"),
        ("efidisk0", "local:1,efitype=8m"),
        ("smbios1", "uuid=not-a-uuid"),
        ("smbios1", "product=a;b"),
        ("vmgenid", "2"),
        ("numa", "maybe"),
    ],
)
def test_malformed_values_are_named(key: str, value: object) -> None:
    assert list(errors({key: value})) == [key]


def test_property_strings_round_trip() -> None:
    net = cfg.NET.parse("virtio=BC:24:11:00:00:01,bridge=vmbr0,rate=2.5,link_down=1")
    assert net == {"model": "virtio", "macaddr": "BC:24:11:00:00:01", "bridge": "vmbr0",
                   "rate": 2.5, "link_down": 1}  # fmt: skip
    assert cfg.NET.print(net) == "virtio=BC:24:11:00:00:01,bridge=vmbr0,rate=2.5,link_down=1"
    disk = cfg.DISK.parse("local:8,discard=on,iothread=1")
    assert disk == {"file": "local:8", "discard": "on", "iothread": 1}
    assert cfg.new_volume_size(disk["file"]) == 8 << 30
    assert cfg.volume_of(cfg.DISK.parse("none,media=cdrom")) is None
    assert cfg.volume_of(cfg.DISK.parse("local:cloudinit")) is None
    assert cfg.volume_of(cfg.DISK.parse("local:iso/x.iso,media=cdrom")) == "local:iso/x.iso"


def test_schema_declares_every_key_once_with_defaults() -> None:
    schema = cfg.SCHEMA.json_schema()
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    for key in ("memory", "cores", "sockets", "net0", "scsi30", "virtio15", "sata5", "ide3",
                "efidisk0", "ipconfig0", "cipassword", "kernel"):  # fmt: skip
        assert key in props, key
    assert props["memory"]["default"] == 512 and props["kvm"]["default"] == 1
    assert "corral extension" in props["kernel"]["description"]
    assert cfg.CONFIG["cipassword"].secret


def test_owned_volumes() -> None:
    assert cfg.owned("local:100/vm-100-disk-0.raw", 100)
    assert cfg.owned("ceph:vm-100-disk-1", 100)
    assert cfg.owned("local:90/base-90-disk-0.raw/100/vm-100-disk-0.qcow2", 100)
    assert not cfg.owned("local:101/vm-101-disk-0.raw", 100)
    assert not cfg.owned("local:iso/vm-100-disk-0.iso", 101)


# -- node limits ---------------------------------------------------------------------


def test_memory_larger_than_the_node_is_refused() -> None:
    host_mib = hostinfo.parse_meminfo((DATA / "meminfo.txt").read_text())["MemTotal"] >> 20
    check_memory({"memory": host_mib}, host_mib=host_mib, node="n1")
    with pytest.raises(ParamError) as err:
        check_memory({"memory": host_mib + 1}, host_mib=host_mib, node="n1")
    assert "memory" in err.value.errors and "more than node 'n1' has" in err.value.errors["memory"]


def test_kvm_without_hardware_virtualization_is_refused() -> None:
    flags = hostinfo.parse_cpuinfo((DATA / "cpuinfo.txt").read_text())["_flags"]
    usable, reason = hostinfo.kvm_usable(flags)
    assert not usable
    with pytest.raises(ParamError) as err:
        check_kvm({}, usable=usable, reason=reason)  # kvm defaults to 1
    assert str(err.value).startswith(KVM_MISSING) and "kvm" in err.value.errors
    check_kvm({"kvm": 0}, usable=usable, reason=reason)
    check_kvm({}, usable=True, reason="")


# -- create(): checks first, undo on failure --------------------------------------------


def test_check_create_names_the_bad_key(driver: QemuDriver, volumes: Volumes) -> None:
    vmid = new_vmid()
    for config, key in (
        ({"scsi0": f"{NOIMAGES}:1"}, "scsi0"),
        ({"scsi0": "nosuchstorage:1"}, "scsi0"),
        ({"memory": 1 << 30}, "memory"),
        ({"virtio0": "none,media=cdrom"}, "virtio0"),
        ({"cores": 1, "vcpus": 2}, "vcpus"),
    ):
        with pytest.raises(ParamError) as err:
            driver.check_create(vmid, cfg.SCHEMA.validate(config), params={}, volumes=volumes)
        assert key in err.value.errors, (config, err.value.errors)


def test_disk_on_storage_without_images_leaves_nothing(
    driver: QemuDriver, volumes: Volumes, node_dir: str
) -> None:
    vmid = new_vmid()
    config = {"memory": 128, "kvm": 0, "scsi0": f"{STORAGE}:0.01", "scsi1": f"{NOIMAGES}:0.01"}
    with pytest.raises(ParamError) as err:
        driver.create(vmid, config, volumes=volumes, log=lambda _m: None, params={})
    assert "scsi1" in err.value.errors and "images" in err.value.errors["scsi1"]
    assert images(node_dir) == []
    assert driver._domain(vmid) is None


def test_failure_after_allocation_frees_what_was_allocated(
    driver: QemuDriver, volumes: Volumes, node_dir: str
) -> None:
    vmid = new_vmid()
    lines: list[str] = []
    config = {
        "memory": 128,
        "kvm": 0,
        "scsi0": f"{STORAGE}:0.01",
        "virtio0": f"{STORAGE}:0.02,format=qcow2",
        "scsi1": f"{STORAGE}:{vmid}/vm-{vmid}-disk-9.raw",  # does not exist
    }
    with pytest.raises(ParamError) as err:
        driver.create(vmid, config, volumes=volumes, log=lines.append, params={})
    assert "scsi1" in err.value.errors
    assert sum("allocated" in line for line in lines) == 2  # both were made...
    assert images(node_dir) == []  # ...and both are gone


def test_create_allocates_names_macs_and_sizes(
    driver: QemuDriver, volumes: Volumes, node_dir: str, boot_keys: dict[str, str]
) -> None:
    vmid = new_vmid()
    config = {
        "memory": 128,
        "kvm": 0,
        "bios": "ovmf",
        "efidisk0": f"{STORAGE}:1,efitype=4m",
        "virtio0": f"{STORAGE}:0.01",
        "net0": "virtio,bridge=crlkb0",
        "vmgenid": "1",
        **boot_keys,
    }
    out = driver.create(vmid, config, volumes=volumes, log=lambda _m: None, params={})
    try:
        assert out["virtio0"] == f"{STORAGE}:{vmid}/vm-{vmid}-disk-1.raw,size=11M"
        efi = cfg.EFIDISK.parse(out["efidisk0"])
        assert efi["file"] == f"{STORAGE}:{vmid}/vm-{vmid}-disk-0.raw" and efi["size"] == "528K"
        vars_file = Path(volumes.qemu_disk(efi["file"])["path"]).read_bytes()
        template = Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes()
        assert vars_file[: len(template)] == template
        assert re.fullmatch(cfg.UUID_PATTERN, out["vmgenid"])  # fixed at creation
        mac = cfg.NET.parse(out["net0"])["macaddr"]
        assert out["net0"] == f"virtio={mac},bridge=crlkb0"
        again = driver.create(vmid + 1 if vmid < 89999 else vmid - 1, config, volumes=volumes,
                              log=lambda _m: None, params={})  # fmt: skip
        assert cfg.NET.parse(again["net0"])["macaddr"] != mac
        driver.destroy(vmid + 1 if vmid < 89999 else vmid - 1, again, volumes=volumes,
                       log=lambda _m: None)  # fmt: skip
    finally:
        driver.destroy(vmid, out, volumes=volumes, log=lambda _m: None)
    assert images(node_dir) == []


def test_driver_info_and_probe(driver: QemuDriver) -> None:
    assert driver.info.type == "qemu" and driver.info.can_live_migrate
    assert {"memory", "balloon", "net0", "name"} <= driver.info.live_config
    assert "cores" not in driver.info.live_config
    probe = driver.probe()
    assert probe.ok, probe.reason
    assert probe.details["kvm"] is False  # this machine kind has no VT-x/AMD-V


def test_a_second_embed_root_in_one_process_is_a_clear_error(driver: QemuDriver) -> None:
    assert driver.probe().ok
    root = short_tmp("crlkvm-other")
    other = QemuDriver(
        node="n1", data_dir=root, options={"libvirt_uri": f"qemu:///embed?root={root}"}
    )
    try:
        probe = other.probe()
        assert not probe.ok and "already open" in probe.reason, probe
    finally:
        other.close()
        shutil.rmtree(root, ignore_errors=True)
