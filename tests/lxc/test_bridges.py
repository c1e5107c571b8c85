"""Node bridges through pyroute2, on real interfaces the test creates and removes."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from corral.cluster import bridges
from corral.cluster.errors import ParamError


@pytest.fixture
def name() -> Iterator[str]:
    n = f"crlbt{random.randint(1000, 9999)}"
    yield n
    bridges.delete_bridge(n)
    bridges.delete_link(n + "d")


def test_ensure_is_idempotent_and_lists(name: str) -> None:
    idx = bridges.ensure_bridge(name, address="10.251.79.1/24")
    assert bridges.ensure_bridge(name, address="10.251.79.1/24") == idx
    found = [b for b in bridges.list_bridges() if b["name"] == name]
    assert len(found) == 1
    assert "10.251.79.1/24" in found[0]["addresses"]
    assert found[0]["state"] in ("UP", "UNKNOWN", "DOWN")  # no ports yet: carrier may be down
    bridges.delete_bridge(name)
    assert not bridges.link_exists(name)
    bridges.delete_bridge(name)  # missing is fine


def test_not_a_bridge_refused(name: str) -> None:
    with IPRoute() as ipr:
        ipr.link("add", ifname=name + "d", kind="veth", peer=name + "p")
    with pytest.raises(ParamError):
        bridges.ensure_bridge(name + "d")


@pytest.mark.parametrize("bad", ["-x", "a" * 16, "a/b", "", "a b"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(ParamError):
        bridges.ensure_bridge(bad)


def test_vlan_filtering_probe_matches_kernel() -> None:
    # This kernel has no bridge VLAN filtering (and no 8021q): tags are refused.
    supported = bridges.vlan_filtering_supported()
    assert isinstance(supported, bool)
    assert not bridges.link_exists("crlvlanprobe0")
