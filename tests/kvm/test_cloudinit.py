"""The NoCloud seed: content from the ci* keys, an ISO read back with pycdlib."""

from __future__ import annotations

import warnings

import pytest
import yaml

from corral.cluster.errors import ParamError
from corral.kvm import cloudinit
from corral.kvm import config as cfg

CONFIG = cfg.SCHEMA.validate(
    {
        "name": "ci1",
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
        "net1": "virtio,bridge=vmbr1",
        "ipconfig0": "ip=10.0.0.5/24,gw=10.0.0.1,ip6=fd00::5/64,gw6=fd00::1",
        "ipconfig1": "ip=dhcp,ip6=auto",
        "ciuser": "debian",
        "cipassword": "s3cret",
        "sshkeys": "ssh-ed25519%20AAAAC3Nza%20me%40laptop%0Assh-rsa%20AAAAB3%20other",
        "nameserver": "10.0.0.1 10.0.0.2",
        "searchdomain": "lab.example",
    }
)
MACS = {1: "BC:24:11:00:00:02"}


def test_iso_has_label_and_files_read_back_with_pycdlib() -> None:
    files = cloudinit.seed_files(CONFIG, 100, MACS)
    back = cloudinit.read_iso(cloudinit.build_iso(files))
    assert back.pop("volume_id") == "cidata"
    assert back == files


def test_user_data() -> None:
    text = cloudinit.seed_files(CONFIG, 100, MACS)["user-data"]
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["hostname"] == "ci1" and doc["fqdn"] == "ci1.lab.example"
    assert doc["user"] == "debian"
    assert doc["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza me@laptop", "ssh-rsa AAAAB3 other"]
    assert "s3cret" not in text  # written hashed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        assert crypt.crypt("s3cret", doc["password"]) == doc["password"]


def test_network_config_v1() -> None:
    doc = yaml.safe_load(cloudinit.seed_files(CONFIG, 100, MACS)["network-config"])
    assert doc["version"] == 1
    eth0, eth1, dns = doc["config"]
    assert eth0 == {
        "type": "physical",
        "name": "eth0",
        "mac_address": "bc:24:11:00:00:01",
        "subnets": [
            {"type": "static", "address": "10.0.0.5", "netmask": "255.255.255.0",
             "gateway": "10.0.0.1"},
            {"type": "static6", "address": "fd00::5/64", "gateway": "fd00::1"},
        ],
    }  # fmt: skip
    assert eth1["mac_address"] == "bc:24:11:00:00:02"
    assert eth1["subnets"] == [{"type": "dhcp4"}, {"type": "ipv6_slaac"}]
    assert dns == {"type": "nameserver", "address": ["10.0.0.1", "10.0.0.2"],
                   "search": ["lab.example"]}  # fmt: skip


def test_instance_id_follows_the_content() -> None:
    first = cloudinit.seed_files(CONFIG, 100, MACS)["meta-data"]
    assert first == cloudinit.seed_files(CONFIG, 100, MACS)["meta-data"]  # stable
    changed = cloudinit.seed_files({**CONFIG, "ciuser": "other"}, 100, MACS)["meta-data"]
    assert changed != first
    assert "local-hostname: ci1\n" in first


def test_slot() -> None:
    assert cloudinit.slot({"memory": 512}) is None
    assert cloudinit.slot({"ciuser": "x"}) == "ide2"
    assert cloudinit.slot({"ciuser": "x", "sata1": "local:cloudinit"}) == "sata1"
    assert cloudinit.slot({"ide0": "local:cloudinit"}) == "ide0"
    with pytest.raises(ParamError) as err:
        cloudinit.slot({"ciuser": "x", "ide2": "none,media=cdrom"})
    assert "ide2" in err.value.errors


def test_ipconfig_without_its_nic_is_refused() -> None:
    with pytest.raises(ParamError) as err:
        cloudinit.network_config({"ipconfig3": "ip=dhcp"}, {})
    assert "ipconfig3" in err.value.errors
