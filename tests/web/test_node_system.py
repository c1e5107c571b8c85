"""A node's services, network interfaces and log through the API, against a real
corrald: what it reports is checked against the processes, the kernel's interfaces
(`ip -j addr`) and the log files themselves; the one restartable service (the private
etcd member) is restarted for real."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from proxmoxer import ProxmoxAPI
from pyroute2 import IPRoute

from tests.util import Corrald

pytestmark = pytest.mark.timeout(180)
BRIDGE, PORT, PEER = "crlnsbr0", "crlnsv0", "crlnsv1"  # test-owned, removed afterwards
NET = "198.51.100.1/24"  # TEST-NET-2, on a bridge nothing routes to


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corrald]:
    daemon = Corrald(tmp_path_factory.mktemp("nodesys") / "node")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def etcd_pid(node: Corrald) -> int:
    out = subprocess.run(["pgrep", "-f", f"etcd --name .*{node.data_dir}/etcd"],
                         capture_output=True, text=True, timeout=10)  # fmt: skip
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, out.stdout
    return pids[0]


def test_services_report_what_runs_and_only_etcd_restarts(node: Corrald) -> None:
    api = node.session()
    rows = {r["service"]: r for r in api.data("GET", "/nodes/node1/services")}
    assert {"corrald", "corral-etcd", "corral-watchdog", "libvirtd", "lxc-monitor", "sshd"} <= set(
        rows
    )
    for row in rows.values():
        assert {"service", "name", "desc", "state", "active-state", "unit-state"} <= set(row)
    assert node.proc is not None
    assert rows["corrald"]["state"] == "running" and rows["corrald"]["pid"] == node.proc.pid
    etcd = rows["corral-etcd"]
    assert etcd["state"] == "running" and etcd["pid"] == etcd_pid(node)
    assert rows["lxc-monitor"]["desc"].startswith("0 container monitors")
    # proxmoxer, as a Proxmox script would ask.
    prox = ProxmoxAPI("127.0.0.1", port=node.port, user="admin@pve", password=node.password,
                      verify_ssl=False)  # fmt: skip
    state = prox.nodes("node1").services("corral-etcd").state.get()
    assert state["pid"] == etcd["pid"] and state["active-state"] == "active"

    # What corral did not start, or cannot do without, is refused with the reason.
    for service, action in (("corrald", "restart"), ("corral-etcd", "stop"), ("sshd", "start"),
                            ("corral-watchdog", "stop")):  # fmt: skip
        r = api.post(f"/nodes/node1/services/{service}/{action}")
        assert r.status_code == 400 and "service" in r.json()["errors"], r.text
    r = api.get("/nodes/node1/services/pveproxy/state")
    assert r.status_code == 400 and "service" in r.json()["errors"]

    # The private etcd member restarts for real (a new process), and the node serves on.
    old = etcd["pid"]
    status = api.run_task("POST", "/nodes/node1/services/corral-etcd/restart", timeout=60)
    assert status["type"] == "srvrestart" and status["id"] == "corral-etcd"
    new = api.data("GET", "/nodes/node1/services/corral-etcd/state")
    assert new["state"] == "running" and new["pid"] != old and new["pid"] == etcd_pid(node)
    assert "restarted 1 times" in new["desc"]
    log = [r["t"] for r in api.data("GET", f"/nodes/node1/tasks/{quote(status['upid'])}/log")]
    assert f"stopping etcd (pid {old})" in log and log[-1] == "TASK OK", log


@pytest.fixture
def bridge() -> Iterator[None]:
    with IPRoute() as ip:
        ip.link("add", ifname=BRIDGE, kind="bridge")
        try:
            ip.link("add", ifname=PORT, kind="veth", peer=PEER)  # no dummy in this kernel
            br = ip.link_lookup(ifname=BRIDGE)[0]
            ip.link("set", index=ip.link_lookup(ifname=PORT)[0], master=br)
            ip.addr("add", index=br, address=NET.split("/")[0], prefixlen=24)
            ip.link("set", index=br, state="up")
            yield
        finally:
            for name in (PORT, BRIDGE):
                if ip.link_lookup(ifname=name):
                    ip.link("del", ifname=name)


def test_network_lists_the_kernels_interfaces(node: Corrald, bridge: None) -> None:
    api = node.session()
    rows = {r["iface"]: r for r in api.data("GET", "/nodes/node1/network")}
    br = rows[BRIDGE]
    assert br["type"] == "bridge" and br["bridge_ports"] == PORT and br["active"] == 1
    assert br["cidr"] == NET and br["address"] == "198.51.100.1"
    assert br["netmask"] == "255.255.255.0" and br["method"] == "static"
    assert rows[PORT]["type"] == "unknown" and rows[PORT]["link-type"] == "veth"
    assert "lo" not in rows
    # The same interfaces and IPv4 addresses as iproute2 shows (guest ports and lo aside).
    raw = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout)  # fmt: skip
    for link in raw:
        name = link["ifname"]
        if name == "lo" or name.startswith(("veth", "tap")):
            continue
        assert name in rows, name
        v4 = [a for a in link.get("addr_info", []) if a["family"] == "inet"]
        if v4:
            assert rows[name]["cidr"] == f"{v4[0]['local']}/{v4[0]['prefixlen']}"
    bridges = api.data("GET", "/nodes/node1/network", params={"type": "any_bridge"})
    assert BRIDGE in {r["iface"] for r in bridges} and all(r["type"] == "bridge" for r in bridges)
    assert api.data("GET", f"/nodes/node1/network/{BRIDGE}")["bridge_ports"] == PORT
    assert api.get("/nodes/node1/network/crlnone0").status_code == 404
    r = api.get("/nodes/node1/network", params={"type": "token-ring"})
    assert r.status_code == 400 and "type" in r.json()["errors"]


def test_syslog_and_journal_read_the_nodes_own_logs(node: Corrald) -> None:
    api = node.session()
    own = (node.data_dir / "log" / "corrald.log").read_text().splitlines()
    assert any("node ready" in line for line in own)
    lines = api.data("GET", "/nodes/node1/syslog", params={"limit": 500})
    assert lines and [r["n"] for r in lines] == list(range(lines[0]["n"], lines[-1]["n"] + 1))
    text = "\n".join(r["t"] for r in lines)
    assert "corrald: level=info logger=corrald" in text and "node ready" in text
    assert "etcd: " in text  # the private member's own output
    first = api.data("GET", "/nodes/node1/syslog", params={"start": 0, "limit": 3})
    assert [r["n"] for r in first] == [1, 2, 3]
    only = api.data("GET", "/nodes/node1/syslog", params={"service": "etcd", "limit": 20})
    assert only and all(" etcd: " in r["t"] for r in only)
    future = time.strftime("%Y-%m-%d", time.localtime(time.time() + 2 * 86400))
    assert api.data("GET", "/nodes/node1/syslog", params={"since": future}) == []
    today = time.strftime("%Y-%m-%d")
    assert api.data("GET", "/nodes/node1/syslog", params={"since": today, "until": today})
    for bad in ({"since": "yesterday"}, {"since": "2026-13-45"}, {"limit": -1}):
        r = api.get("/nodes/node1/syslog", params=bad)
        assert r.status_code == 400 and set(bad) <= set(r.json()["errors"]), (bad, r.text)

    # The journal: the last entries between two cursors; polling from the end cursor
    # returns only what was logged since (an audited change).
    got = api.data("GET", "/nodes/node1/journal", params={"lastentries": 5})
    assert len(got) == 7 and got[0].startswith("corral-") and got[-1].startswith("corral-")
    api.post("/access/users", data={"userid": "syslog-probe@pve", "password": "long enough pw"})
    newer = api.data("GET", "/nodes/node1/journal", params={"startcursor": got[-1]})
    assert any("audit user=admin@pve method=POST path=/access/users" in x for x in newer[1:-1])
    assert not any(x in newer[1:-1] for x in got[1:-1])
    r = api.get("/nodes/node1/journal", params={"startcursor": "nonsense"})
    assert r.status_code == 400 and "startcursor" in r.json()["errors"]

    # Sys.Syslog is needed, as in Proxmox.
    nobody = node.session("syslog-probe@pve", "long enough pw")
    assert nobody.get("/nodes/node1/syslog").status_code == 403
    assert nobody.get("/nodes/node1/services").status_code == 403


def test_a_host_syslog_line_format_is_understood() -> None:
    from corral.cluster import node_logs

    year = 2026
    when, text = node_logs.parse_time("Dec  6 06:06:14 host sshd[12]: Accepted", year) or (0, "")
    assert time.localtime(when)[:6] == (2026, 12, 6, 6, 6, 14) and text == "host sshd[12]: Accepted"
    when, text = node_logs.parse_time("2026-12-06 06:06:14.219+0000: 11462: error : x", year) or (
        0,
        "",
    )
    assert when == pytest.approx(1796537174.219) and text.startswith("11462: error")
    assert node_logs.parse_time("   continuation", year) is None
