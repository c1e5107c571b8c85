"""lxc.conf rendering against golden files: tests/golden/lxc/NAME.json -> NAME.conf.

`CORRAL_REGEN_GOLDEN=1` rewrites the expected files (review the diff); a
missing expected file is written out and the test fails so it gets reviewed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.cluster.errors import ParamError
from corral.lxc.render import Facts, render
from tests.util import assert_golden

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "lxc"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))


def _render(case: dict) -> str:
    facts = dict(case["facts"])
    facts["mounts"] = dict(facts.get("mounts", {}))
    facts["hwaddrs"] = {int(k): v for k, v in facts.get("hwaddrs", {}).items()}
    return render(case["config"], Facts(**facts))


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 5


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    case = json.loads((GOLDEN / f"{name}.json").read_text())
    got = _render(case)
    expected = GOLDEN / f"{name}.conf"
    assert_golden(got, expected)


def test_vlan_tag_refused_without_filtering() -> None:
    facts = Facts(vmid=100, lxcpath="/var/lib/corral/lxc", rootfs_path="/r")
    with pytest.raises(ParamError) as err:
        render({"net0": "name=eth0,bridge=vmbr0,tag=5"}, facts)
    assert "net0" in err.value.errors and "VLAN" in err.value.errors["net0"]


def test_vlan_tag_rendered_when_filtering() -> None:
    facts = Facts(vmid=100, lxcpath="/l", rootfs_path="/r", vlan_filtering=True)
    assert "lxc.net.0.veth.vlan.id = 5\n" in render({"net0": "name=eth0,tag=5"}, facts)


@pytest.mark.parametrize("path", ["/r oot", "relative", "/a\nlxc.hook.pre-start = /x"])
def test_host_paths_cannot_inject(path: str) -> None:
    with pytest.raises(ParamError) as err:
        render({}, Facts(vmid=100, lxcpath="/l", rootfs_path=path))
    assert "rootfs" in err.value.errors


def test_mount_point_must_be_mounted() -> None:
    with pytest.raises(ParamError) as err:
        render(
            {"mp0": "crl:100/x.subvol,mp=/data"}, Facts(vmid=100, lxcpath="/l", rootfs_path="/r")
        )
    assert "mp0" in err.value.errors
