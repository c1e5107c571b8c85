"""Host facts parsed from captured /proc text, and hvm detection on this host."""

from __future__ import annotations

from pathlib import Path

from corral.cluster import hostinfo

CPUINFO = """processor\t: 0
physical id\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
cpu MHz\t\t: 2400.000
flags\t\t: fpu vme de pse vmx sse2
processor\t: 1
physical id\t: 1
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
flags\t\t: fpu vme de pse vmx sse2
"""

MEMINFO = """MemTotal:       16318124 kB
MemFree:         1021352 kB
MemAvailable:   12017272 kB
SwapTotal:       2097148 kB
SwapFree:        2097148 kB
HugePages_Total:       0
"""


def test_parse_cpuinfo() -> None:
    info = hostinfo.parse_cpuinfo(CPUINFO)
    assert info["cpus"] == 2 and info["sockets"] == 2 and info["cores"] == 1
    assert info["model"].startswith("Intel(R) Xeon(R)")
    assert "vmx" in info["_flags"]


def test_parse_meminfo() -> None:
    mem = hostinfo.parse_meminfo(MEMINFO)
    assert mem["MemTotal"] == 16318124 * 1024 and mem["HugePages_Total"] == 0


def test_kvm_needs_cpu_flags_and_a_working_device(tmp_path: Path) -> None:
    assert hostinfo.kvm_usable(set())[0] is False
    assert "vmx or svm" in hostinfo.kvm_usable(set())[1]
    ok, reason = hostinfo.kvm_usable({"vmx"}, dev=str(tmp_path / "nokvm"))
    assert not ok and "cannot be opened" in reason
    plain = tmp_path / "plainfile"
    plain.write_text("")
    ok, reason = hostinfo.kvm_usable({"svm"}, dev=str(plain))
    assert not ok and "KVM_GET_API_VERSION" in reason


def test_this_host_reports_its_truth() -> None:
    status = hostinfo.host_status("/")
    flags = set(status["cpuinfo"]["flags"].split())
    if not flags & {"vmx", "svm"}:
        # This machine kind: a paravirtual /dev/kvm and no VT-x/AMD-V flag.
        assert status["cpuinfo"]["hvm"] == 0 and status["hvm_reason"]
    assert status["memory"]["total"] > status["memory"]["used"] > 0
    assert len(status["loadavg"]) == 3 and status["uptime"] > 0


def test_cgroups_above_namespace(tmp_path: Path) -> None:
    """What the fresh-debian container shows: the host's /sys/fs/cgroup bound into a
    container with its own cgroup namespace (mount roots '/..')."""
    nested = tmp_path / "nested"
    nested.write_text(
        "152 148 0:32 /.. /sys/fs/cgroup/memory rw,relatime shared:32 - cgroup cgroup rw,memory\n"
    )
    host = tmp_path / "host"
    host.write_text("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n")
    assert hostinfo.cgroups_above_namespace(str(nested))
    assert not hostinfo.cgroups_above_namespace(str(host))
    assert not hostinfo.cgroups_above_namespace(str(tmp_path / "missing"))
