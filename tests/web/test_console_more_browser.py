"""More of the web console in headless Chromium against a real corrald: a node's
services, network and log pages, console sessions in the task panel, the VM wizard's
cloud-init step and a storage's "download from URL". Screenshots as in
test_console_browser (CORRAL_SCREENSHOTS keeps them)."""

from __future__ import annotations

import hashlib
import http.server
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import NEEDS_CHROMIUM, chromium, new_page, screenshot_dir, shot
from tests.browser import log_in as browser_log_in
from tests.loopback_http import serve
from tests.nodes import vm_node
from tests.util import Corrald, wait_for

pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def node(guest_files: dict[str, str]) -> Iterator[Corrald]:
    with vm_node("crlbrmore", guest_files) as (daemon, _):
        yield daemon


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any, node: Corrald) -> Iterator[Any]:
    with new_page(browser) as pg:
        yield pg


def log_in(page: Any, node: Corrald) -> None:
    browser_log_in(page, node.url, node.password)


def test_node_services_network_and_syslog_pages(node: Corrald, page: Any, shots: Path) -> None:
    log_in(page, node)
    page.click("#tree a[data-id='node/node1']")
    page.click("#node-tab-services")
    row = page.wait_for_selector("#services tr[data-service=corrald]")
    assert "running" in row.inner_text()
    page.wait_for_selector("#services tr[data-service=corral-etcd] td:has-text('running')")
    # Only what the API offers is a button: the private etcd member's restart.
    assert page.locator("#services button").count() == 1
    shot(page, shots, "30-node-services")
    page.click("button[aria-label='restart corral-etcd']")
    page.wait_for_selector("#tasklist td:has-text('Restart service corral-etcd')")
    page.wait_for_selector("#tasklog-title[data-state='OK']", timeout=60000)

    page.click("#node-tab-network")
    page.wait_for_selector("#network tr[data-iface]")
    assert page.locator("#network tr[data-iface=lo]").count() == 0
    shot(page, shots, "31-node-network")

    page.click("#node-tab-syslog")
    page.wait_for_selector("#syslog:has-text('node ready')")
    # Follow: a new line (an audited change) appears without reloading.
    marker = f"probe{random.randint(1000, 9999)}@pve"
    node.session().delete(f"/access/users/{marker}")  # audited with its path, even a 404
    page.wait_for_selector(f"#syslog:has-text('{marker}')", timeout=15000)
    shot(page, shots, "32-node-syslog")
    page.select_option("#syslog-filter select[name=service]", "etcd")
    page.click("#syslog-filter button[type=submit]")
    wait_for(lambda: "corrald:" not in page.inner_text("#syslog"), 10, 0.2, "only etcd lines")
    # The keyboard reaches every tab.
    page.focus("#node-tab-services")
    page.keyboard.press("Enter")
    page.wait_for_selector("#services tr[data-service=corrald]")


def test_a_console_session_is_a_task_in_the_panel(node: Corrald, page: Any, shots: Path) -> None:
    log_in(page, node)
    page.click("#tree a[data-id='node/node1']")
    page.click("#node-tab-shell")
    page.locator("#terminal .xterm-rows").filter(has_text="login:").wait_for()
    # Running while the session is open...
    row = page.locator("#tasklist tr", has_text="Terminal").first
    row.locator("td.running").wait_for()
    upid = row.get_attribute("data-upid")
    assert upid and ":termproxy::admin@pve:" in upid
    shot(page, shots, "33-console-task-running")
    # ...and OK once it is closed (leaving the page closes it).
    page.click("#node-tab-summary")
    page.locator(f"#tasklist tr[data-upid='{upid}'] td.OK").wait_for(timeout=20000)
    shot(page, shots, "34-console-task-ended")
    # Stop on a console's task closes the console, as in Proxmox.
    page.click("#node-tab-shell")
    page.locator("#terminal .xterm-rows").filter(has_text="login:").wait_for()
    row = page.locator("#tasklist tr", has=page.locator("td.running"), has_text="Terminal").first
    row.wait_for()
    row.click()
    page.click("#tasklog-stop")
    page.wait_for_selector("#tasklog-title[data-state='aborted by user']", timeout=20000)
    page.wait_for_selector("#console-state:text-is('Disconnected')")
    shot(page, shots, "34b-console-task-stopped")


class _Files(http.server.BaseHTTPRequestHandler):
    body = b"\0" * (1 << 20)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def files() -> Iterator[str]:
    with serve(_Files) as url:
        yield url


def test_download_from_url_into_a_storage(
    node: Corrald, page: Any, shots: Path, files: str
) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, node)
    page.click("#tree a[data-id='storage/node1/local']")
    page.wait_for_selector("h1:has-text('local on node1')")
    # A refused URL: the API's reason, naming the parameter.
    page.fill("#download-url input[name=url]", "ftp://127.0.0.1/x.iso")
    page.click("#download-url button[type=submit]")
    assert "url" in page.wait_for_selector("#toast:not([hidden]):not(.info)").inner_text()
    page.fill("#download-url input[name=url]", f"{files}/fetched.iso")
    assert page.input_value("#download-url input[name=filename]") == "fetched.iso"
    page.select_option("#download-url select[name=checksum-algorithm]", "sha256")
    page.fill("#download-url input[name=checksum]", hashlib.sha256(_Files.body).hexdigest())
    shot(page, shots, "35-download-url")
    page.click("#download-url button[type=submit]")
    page.wait_for_selector("#tasklist td:has-text('Download to local')")
    page.wait_for_selector("#tasklog-title[data-state='OK']", timeout=60000)
    page.wait_for_selector("#content-list tr[data-volid='local:iso/fetched.iso']")
    shot(page, shots, "36-downloaded")
    page.click("button[aria-label='Delete local:iso/fetched.iso']")
    page.wait_for_selector("#content-list tr[data-volid='local:iso/fetched.iso']", state="detached")


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcorralwizardtestkeyonlyforthistest0000 ops@example"


def test_the_vm_wizard_cloud_init_step(node: Corrald, page: Any, shots: Path) -> None:
    from corral.kvm import cloudinit

    log_in(page, node)
    page.click("#create-vm")
    page.wait_for_selector("input[name=vmid]")
    wait_for(lambda: page.input_value("input[name=vmid]") != "", 20, 0.1, "the next free ID")
    vmid = int(page.input_value("input[name=vmid]"))
    page.fill("input[name=name]", "ci-vm")
    page.click("#wizard-next")
    page.wait_for_selector("select[name=iso]")
    page.click("#wizard-next")
    page.fill("input[name=size]", "1")
    page.click("#wizard-next")
    page.fill("input[name=memory]", "128")
    page.click("#wizard-next")
    page.fill("input[name=bridge]", "crlbrci0")  # never started here: no bridge is made
    page.click("#wizard-next")
    # The cloud-init step, by keyboard where a user would type.
    page.check("input[name=ci]")
    page.fill("input[name=ciuser]", "ops")
    page.fill("input[name=cipassword]", "s3cret-pass")
    page.fill("textarea[name=sshkeys]", KEY)
    page.fill("input[name=ciip]", "10.77.0.5/24")
    page.fill("input[name=cigw]", "10.77.0.1")
    page.fill("input[name=nameserver]", "10.77.0.1")
    page.fill("input[name=searchdomain]", "lab.example")
    shot(page, shots, "37-vm-wizard-cloud-init")
    page.keyboard.press("Enter")
    summary = page.wait_for_selector("#wizard-summary").inner_text()
    assert "ciuser\tops" in summary and "s3cret" not in summary and "1 key(s)" in summary
    shot(page, shots, "38-vm-wizard-confirm")
    page.click("#wizard-create")
    page.wait_for_selector(f"#tasklist td:has-text('Create VM {vmid}')")
    page.wait_for_selector("#tasklog-title[data-state='OK']", timeout=120000)
    api = node.session()
    try:
        config = api.data("GET", f"/nodes/node1/qemu/{vmid}/config")
        assert config["ide2"] == "local:cloudinit"  # the cloud-init drive
        assert config["ciuser"] == "ops" and config["ipconfig0"] == "ip=10.77.0.5/24,gw=10.77.0.1"
        assert config["nameserver"] == "10.77.0.1" and config["searchdomain"] == "lab.example"
        assert "cipassword" not in config or config["cipassword"] != "s3cret-pass"  # never echoed
        # The seed this config makes (what the drive gets at each start).
        full = api.data("GET", f"/nodes/node1/qemu/{vmid}/config", params={"current": 1})
        assert cloudinit.slot(full) == "ide2"
        files = cloudinit.seed_files(full, vmid, {})
        assert "user: ops" in files["user-data"] and KEY in files["user-data"]
        assert "password: $6$" in files["user-data"] and "s3cret" not in files["user-data"]
        assert (
            "address: 10.77.0.5" in files["network-config"]
            and "lab.example" in files["network-config"]
        )
    finally:
        api.run_task("DELETE", f"/nodes/node1/qemu/{vmid}", params={"purge": 1})


def test_node_pages_at_phone_width_in_dark(node: Corrald, page: Any, shots: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, node)
    if page.evaluate("document.documentElement.dataset.theme") != "dark":
        page.click("#theme")
    for tab, ready, name in (
        ("services", "#services tr[data-service=corrald]", "39-phone-services-dark"),
        ("network", "#network tr[data-iface]", "40-phone-network-dark"),
        ("syslog", "#syslog:has-text('corrald')", "41-phone-syslog-dark"),
    ):
        page.goto(f"{node.url}/#/node/node1/{tab}")
        page.wait_for_selector(ready)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 400, f"{tab} scrolls sideways at phone width ({width} px)"
        shot(page, shots, name)
