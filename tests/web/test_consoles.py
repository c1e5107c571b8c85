"""Guest consoles over WebSocket, against two real corralds on one etcd: a running
busybox CT's shell through termproxy + vncwebsocket (Proxmox's termproxy protocol),
and a TCG VM's VNC server through vncproxy + vncwebsocket, each from the owning node
and relayed through the other one. The client is `websocket-client`, as scripts use it.
"""

from __future__ import annotations

import random
import re
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websocket

from corral.cluster.etcd_embed import EmbeddedEtcd
from tests.assets import guest
from tests.kvm.conftest import kill_qemus_under, new_vmid, short_tmp, virsh_cleanup
from tests.lxc.helpers import cleanup_lxcpath
from tests.nodes import install_guest_files
from tests.util import ApiSession, Corrald, free_ports, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def nodes(guest_files: dict[str, str]) -> Iterator[tuple[Corrald, Corrald]]:
    base = short_tmp("crlcons")
    etcd = EmbeddedEtcd(Path(base) / "etcd", name="ext", client_port=free_ports(2))
    etcd.start()
    uri = f"qemu:///embed?root={base}/lv"
    one = Corrald(Path(base) / "one", node="node1",
                  extra=["--etcd", etcd.endpoint, "--libvirt-uri", uri])  # fmt: skip
    two = Corrald(Path(base) / "two", node="node2", extra=["--etcd", etcd.endpoint])
    try:
        one.start()
        two.start()
        two.password = one.password
        install_guest_files(one, guest_files)
        yield one, two
    finally:
        two.stop()
        one.stop()
        cleanup_lxcpath(str(one.data_dir / "lxc"))
        try:
            virsh_cleanup(uri)
        finally:
            kill_qemus_under(base)
            etcd.stop()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def ct(nodes: tuple[Corrald, Corrald]) -> Iterator[int]:
    """A running busybox CT on node1 (no network: the console needs none)."""
    one, _ = nodes
    template = one.build_template()
    api = one.session()
    vmid = new_vmid()
    api.run_task("POST", "/nodes/node1/lxc", data={
        "vmid": vmid, "ostemplate": template, "rootfs": "local:1", "memory": 64, "start": 1,
    })  # fmt: skip
    yield vmid
    api.run_task("POST", f"/nodes/node1/lxc/{vmid}/status/stop")
    api.run_task("DELETE", f"/nodes/node1/lxc/{vmid}", params={"purge": 1})


def connect(node: Corrald, api: ApiSession, path: str, port: int, ticket: str) -> Any:
    url = node.url.replace("https://", "wss://") + f"/api2/json{path}/vncwebsocket"
    url += f"?port={port}&vncticket={quote(ticket, safe='')}"
    return websocket.create_connection(
        url,
        cookie=f"PVEAuthCookie={quote(api.ticket, safe='')}",
        sslopt={"ca_certs": api.ca, "cert_reqs": ssl.CERT_REQUIRED},
        subprotocols=["binary"],
        timeout=20,
    )


def read_until(ws: Any, pattern: str, timeout: float = 20) -> str:
    got = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = ws.recv()
        except websocket.WebSocketTimeoutException:
            break
        got += data.decode(errors="replace") if isinstance(data, bytes) else data
        if re.search(pattern, got):
            return got
    raise AssertionError(f"no {pattern!r} in {got!r}")


def type_line(ws: Any, text: str) -> None:
    data = text.encode()
    ws.send(f"0:{len(data)}:".encode() + data, opcode=websocket.ABNF.OPCODE_BINARY)


@pytest.mark.parametrize("via", ["node1", "node2"])
def test_a_command_typed_into_a_ct_terminal_answers(
    nodes: tuple[Corrald, Corrald], ct: int, via: str
) -> None:
    node = nodes[0] if via == "node1" else nodes[1]
    api = node.session()
    path = f"/nodes/node1/lxc/{ct}"
    proxy = api.data("POST", f"{path}/termproxy")
    assert 5900 <= proxy["port"] < 6000 and proxy["user"] == "admin@pve"
    # The session is a task, as in Proxmox: running while it is open.
    upid = proxy["upid"]
    assert upid.startswith("UPID:node1:") and f":termproxy:{ct}:admin@pve:" in upid
    ws = connect(node, api, path, proxy["port"], proxy["ticket"])
    try:
        assert ws.subprotocol == "binary"
        ws.send(f"admin@pve:{proxy['ticket']}\n")
        assert read_until(ws, "^OK").startswith("OK")
        read_until(ws, r"[#$] ")  # the prompt (a shell flushes what was typed ahead of it)
        number = random.randint(1000, 9999)
        # The answer (a product) differs from the typed text, so only the shell can write it.
        type_line(ws, f"echo hello-$(({number}*3))\n")
        read_until(ws, rf"hello-{number * 3}\b")
        ws.send(b"1:100:37:", opcode=websocket.ABNF.OPCODE_BINARY)  # resize
        ws.send(b"2", opcode=websocket.ABNF.OPCODE_BINARY)  # keep-alive
        type_line(ws, "stty size\n")
        read_until(ws, r"\b37 100\b")
        status = api.data("GET", f"/nodes/node1/tasks/{quote(upid, safe='')}/status")
        assert status["status"] == "running" and status["type"] == "termproxy"
        listed = api.data("GET", "/cluster/tasks")
        assert any(t["upid"] == upid and not t.get("endtime") for t in listed)
        type_line(ws, "exit\n")
        ws.settimeout(10)
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            for _ in range(100):
                ws.recv()
    finally:
        ws.close()
    # Closed: the task ended OK, with its log.
    status = api.wait_task(upid, timeout=20)
    assert status["exitstatus"] == "OK", status
    log = [r["t"] for r in api.data("GET", f"/nodes/node1/tasks/{quote(upid, safe='')}/log")]
    assert log[0].startswith(f"terminal of CT {ct}") and log[-1] == "TASK OK", log


def test_console_tickets_are_single_use_and_checked(
    nodes: tuple[Corrald, Corrald], ct: int
) -> None:
    one, _ = nodes
    api = one.session()
    path = f"/nodes/node1/lxc/{ct}"
    unused = api.data("POST", f"{path}/termproxy")
    issued = time.monotonic()
    proxy = api.data("POST", f"{path}/termproxy")
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        connect(one, api, path, proxy["port"], "wrong")
    assert err.value.status_code == 403
    # Not an upgrade: a plain GET is a 400 naming what is missing.
    r = api.get(f"{path}/vncwebsocket", params={"port": proxy["port"], "vncticket": "x"})
    assert r.status_code == 400 and "WebSocket" in r.json()["message"]
    r = api.get(f"{path}/vncwebsocket", params={"port": "nope", "vncticket": "x"})
    assert r.status_code == 400 and "port" in r.json()["errors"]
    # A wrong first message closes the terminal.
    ws = connect(one, api, path, proxy["port"], proxy["ticket"])
    ws.send("admin@pve:not-the-ticket\n")
    ws.settimeout(10)
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv()
        ws.recv()
    ws.close()
    # The ticket was used up.
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        connect(one, api, path, proxy["port"], proxy["ticket"])
    assert err.value.status_code == 403
    # Without credentials: 401 before any upgrade.
    anon = one.anonymous()
    anon.ticket = "PVE:nobody::bad"
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        connect(one, anon, path, 5900, "x")
    assert err.value.status_code == 401
    # Its session's task ended in error: a wrong first message.
    status = api.wait_task(proxy["upid"], timeout=20)
    assert status["exitstatus"] == "authentication failed", status
    # A ticket never used ends its task when it expires (30 s).
    status = api.wait_task(unused["upid"], timeout=45 - (time.monotonic() - issued))
    assert status["exitstatus"] == "no connection within 30 s", status


def test_termproxy_of_a_stopped_or_missing_ct_is_refused(
    nodes: tuple[Corrald, Corrald], ct: int
) -> None:
    one, _ = nodes
    api = one.session()
    vmid = new_vmid()
    api.run_task("POST", "/nodes/node1/lxc", data={
        "vmid": vmid, "ostemplate": "local:vztmpl/busybox-corral_amd64.tar.gz",
        "rootfs": "local:1", "memory": 64,
    })  # fmt: skip
    try:
        r = api.post(f"/nodes/node1/lxc/{vmid}/termproxy")
        assert r.status_code == 409 and "not running" in r.json()["message"], r.text
    finally:
        api.run_task("DELETE", f"/nodes/node1/lxc/{vmid}", params={"purge": 1})
    r = api.post("/nodes/node1/lxc/99999/termproxy")
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("via", ["node1", "node2"])
def test_a_vm_vnc_console_through_vncwebsocket(
    nodes: tuple[Corrald, Corrald], guest_files: dict[str, str], via: str
) -> None:
    one = nodes[0]
    node = nodes[0] if via == "node1" else nodes[1]
    api = one.session()
    vmid = new_vmid()
    api.run_task("POST", "/nodes/node1/qemu", data={
        "vmid": vmid, "memory": 128, "kvm": 0, "tablet": 0, "serial0": "socket",
        "kernel": "local:snippets/vmlinuz", "initrd": "local:snippets/initrd.img",
        "cmdline": guest_files["cmdline"],
    })  # fmt: skip
    try:
        api.run_task("POST", f"/nodes/node1/qemu/{vmid}/status/start", timeout=180)
        session = node.session()
        path = f"/nodes/node1/qemu/{vmid}"
        vnc = session.data("POST", f"{path}/vncproxy", data={"websocket": 1})
        ws = connect(node, session, path, int(vnc["port"]), vnc["ticket"])
        try:
            hello = ws.recv()
            assert hello.startswith(b"RFB 003.00"), hello
            ws.send(hello, opcode=websocket.ABNF.OPCODE_BINARY)  # same version back
            types = ws.recv()
            # Security types offered: VNC authentication (2) since the VM has a password.
            assert types[0] >= 1 and 2 in types[1:], types
            # The session runs as a `vncproxy` task on the VM's node while it is open.
            assert f":vncproxy:{vmid}:admin@pve:" in vnc["upid"]
            status = session.data("GET", f"/nodes/node1/tasks/{quote(vnc['upid'], safe='')}/status")
            assert status["status"] == "running"
        finally:
            ws.close()
        assert session.wait_task(vnc["upid"], timeout=20)["exitstatus"] == "OK"
        # Its serial port through termproxy (the guest runs a shell on ttyS0).
        log = one.data_dir / "qemu" / f"{vmid}.serial0.log"
        wait_for(lambda: guest.MARKER_READY in log.read_text(errors="replace"), 180, 0.2, "boot")
        proxy = session.data("POST", f"{path}/termproxy", data={"serial": "serial0"})
        ws = connect(node, session, path, proxy["port"], proxy["ticket"])
        try:
            ws.send(f"admin@pve:{proxy['ticket']}\n")
            assert read_until(ws, "^OK").startswith("OK")
            number = random.randint(1000, 9999)
            type_line(ws, f"echo serial-$(({number}*3))\n")
            read_until(ws, rf"serial-{number * 3}\b", timeout=60)
        finally:
            ws.close()
        r = session.post(f"{path}/termproxy", data={"serial": "serial1"})
        assert r.status_code == 400 and "serial" in r.json()["errors"]
    finally:
        api.run_task("POST", f"/nodes/node1/qemu/{vmid}/status/stop")
        api.run_task("DELETE", f"/nodes/node1/qemu/{vmid}", params={"purge": 1})


def root_session(node: Corrald) -> ApiSession:
    """root@pam as the host's root would log in (its password is the host's, which a test
    does not know): a ticket minted with the cluster's key, as corrald does for its socket."""
    from corral.cluster.access import Access
    from corral.cluster.store import Store

    store = Store([node.extra[1]])  # the cluster's etcd (--etcd URL)
    try:
        ticket, csrf = Access(store).issue_ticket("root@pam")
    finally:
        store.close()
    api = ApiSession(node.url, node.ca)
    api.http.cookies.set("PVEAuthCookie", ticket)
    api.ticket, api.csrf = ticket, csrf
    return api


@pytest.mark.parametrize("via", ["node1", "node2"])
def test_the_node_shell(nodes: tuple[Corrald, Corrald], via: str) -> None:
    node = nodes[0] if via == "node1" else nodes[1]
    root = root_session(node)
    proxy = root.data("POST", "/nodes/node1/termproxy")
    ws = connect(node, root, "/nodes/node1", proxy["port"], proxy["ticket"])
    try:
        ws.send(f"root@pam:{proxy['ticket']}\n")
        assert read_until(ws, "^OK").startswith("OK")
        read_until(ws, r"[#$] ")  # root's login shell
        number = random.randint(1000, 9999)
        type_line(ws, f"echo node-$(({number}*3)) $(id -u)\n")
        read_until(ws, rf"node-{number * 3} 0\b")
    finally:
        ws.close()
    # Anyone else with Sys.Console gets the host's login prompt, not a shell.
    admin = node.session()
    proxy = admin.data("POST", "/nodes/node1/termproxy")
    ws = connect(node, admin, "/nodes/node1", proxy["port"], proxy["ticket"])
    try:
        ws.send(f"admin@pve:{proxy['ticket']}\n")
        read_until(ws, "^OK")
        read_until(ws, r"login: ")
    finally:
        ws.close()


def test_a_nodes_services_and_log_answer_from_any_node(nodes: tuple[Corrald, Corrald]) -> None:
    """Services, network and log are the node's own: node1 forwards the calls to node2."""
    one, two = nodes
    api = one.session()
    assert two.proc is not None
    rows = {r["service"]: r for r in api.data("GET", "/nodes/node2/services")}
    assert rows["corrald"]["pid"] == two.proc.pid
    assert (
        rows["corral-etcd"]["state"] == "unknown" and "external etcd" in rows["corral-etcd"]["desc"]
    )
    r = api.post("/nodes/node2/services/corral-etcd/restart")
    assert r.status_code == 400 and "external etcd" in r.json()["errors"]["service"]
    log = "\n".join(x["t"] for x in api.data("GET", "/nodes/node2/syslog", params={"limit": 500}))
    assert "node ready node=node2" in log and "node=node1" not in log
    assert api.data("GET", "/nodes/node2/network")


def test_stopping_a_console_task_closes_the_console(
    nodes: tuple[Corrald, Corrald], ct: int
) -> None:
    """As Proxmox's "Stop" on a vncproxy/termproxy task: the session ends, aborted."""
    one, two = nodes
    api = one.session()
    path = f"/nodes/node1/lxc/{ct}"
    proxy = api.data("POST", f"{path}/termproxy")
    ws = connect(one, api, path, proxy["port"], proxy["ticket"])
    try:
        ws.send(f"admin@pve:{proxy['ticket']}\n")
        read_until(ws, r"[#$] ")
        # Stopped through the other node: the record's abort mark reaches node1.
        two.session().delete(f"/nodes/node1/tasks/{quote(proxy['upid'], safe='')}")
        ws.settimeout(10)
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            for _ in range(100):
                ws.recv()
    finally:
        ws.close()
    status = api.wait_task(proxy["upid"], timeout=20)
    assert status["exitstatus"] == "aborted by user", status
