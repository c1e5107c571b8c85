"""Config declarations: bad input is a ParamError naming the key; MACs are stable."""

from __future__ import annotations

import pytest

from corral.cluster import bridges
from corral.cluster.errors import ParamError
from corral.cluster.schema import new_volume_size
from corral.lxc import config as cfg

BAD = [
    ({"nosuchkey": "1"}, "nosuchkey"),
    ({"net0": "bridge=vmbr0"}, "net0"),  # name is required
    ({"net0": "name=eth0,ip=10.0.0.1"}, "net0"),  # not CIDR
    ({"net1": "name=eth0,ip6=bogus"}, "net1"),
    ({"net0": "name=-eth0"}, "net0"),
    ({"net0": "name=eth0,hwaddr=01:00:00:00:00:01"}, "net0"),  # multicast
    ({"net0": "name=eth0,tag=5000"}, "net0"),
    ({"memory": 8}, "memory"),
    ({"swap": -1}, "swap"),
    ({"cores": 0}, "cores"),
    ({"rootfs": "local:../../etc"}, "rootfs"),
    ({"rootfs": "size=4G"}, "rootfs"),
    ({"mp0": "local:4"}, "mp0"),  # no mp=
    ({"mp0": "local:4,mp=/a/../../b"}, "mp0"),
    ({"mp255": "local:4,mp=relative"}, "mp255"),
    ({"hostname": "-bad"}, "hostname"),
    ({"features": "nesting=1,bogus=1"}, "features"),
    ({"ostype": "windows"}, "ostype"),
    ({"nameserver": "1.2.3.4 not-an-ip"}, "nameserver"),
    ({"startup": "order=x"}, "startup"),
    ({"lock": "nope"}, "lock"),
]


@pytest.mark.parametrize(("raw", "key"), BAD)
def test_bad_config_names_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ParamError) as err:
        cfg.SCHEMA.validate(raw, partial=True)
    assert set(err.value.errors) == {key}


def test_all_bad_keys_reported_at_once() -> None:
    with pytest.raises(ParamError) as err:
        cfg.SCHEMA.validate({"memory": 1, "net0": "x", "bogus": 1}, partial=True)
    assert set(err.value.errors) == {"memory", "net0", "bogus"}


def test_good_config_round_trip() -> None:
    raw = {
        "hostname": "ct1",
        "memory": "256",
        "rootfs": "local:8",
        "mp3": "local:101/subvol-101-disk-1.subvol,mp=/data,backup=1,size=2G",
        "net0": "name=eth0,bridge=vmbr0,ip=dhcp,ip6=auto,firewall=1,rate=12.5,mtu=9000",
        "features": "nesting=1,mount=nfs;cifs",
        "nameserver": "192.0.2.53 2001:db8::53",
        "searchdomain": "example.org",
        "startup": "order=2,up=30",
        "onboot": "1",
    }
    out = cfg.SCHEMA.validate(raw, partial=True)
    assert out["memory"] == 256 and out["onboot"] == 1
    assert new_volume_size(cfg.parse_mps(out)["rootfs"]["volume"]) == 8 << 30
    assert new_volume_size("local:101/subvol-101-disk-1.subvol") is None
    net = cfg.parse_net(out)[0]
    assert net["ip"] == "dhcp" and net["mtu"] == 9000
    assert cfg.NET.parse(cfg.NET.print(net)) == net


def test_live_and_pending_keys_declared() -> None:
    assert {
        "memory",
        "swap",
        "cores",
        "cpulimit",
        "cpuunits",
        "description",
        "onboot",
    } <= cfg.LIVE_KEYS
    assert not {"hostname", "net0", "rootfs", "mp0", "unprivileged"} & cfg.LIVE_KEYS


def test_macs_stable_unicast_local() -> None:
    a = bridges.guest_mac(101, 0, "seed")
    assert a == bridges.guest_mac(101, 0, "seed")
    macs = {bridges.guest_mac(v, i, "seed") for v in range(100, 150) for i in range(4)}
    assert len(macs) == 200
    assert bridges.guest_mac(101, 0, "other") != a
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01
        cfg.SCHEMA.validate({"net0": f"name=eth0,hwaddr={mac}"}, partial=True)
