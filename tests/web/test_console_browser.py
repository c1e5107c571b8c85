"""The web console in a real headless Chromium against a real corrald: log in, find the
node and a guest in the tree, create a CT with the wizard, start it, type into its
terminal, watch the task panel, edit a config value and see it pending.

Screenshots of every page are kept under the module's tmp dir (the path is printed), or
in $CORRAL_SCREENSHOTS when set.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.assets import guest
from tests.browser import NEEDS_CHROMIUM, chromium, screenshot_dir
from tests.kvm.serial import Serial, wait_ready
from tests.nodes import vm_node
from tests.util import Corrald, wait_for

pytestmark = [
    NEEDS_CHROMIUM,
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def node(guest_files: dict[str, str]) -> Iterator[Corrald]:
    with vm_node("crlbrowser", guest_files) as (daemon, _):
        try:
            yield daemon
        finally:
            api = daemon.session()
            for row in api.data("GET", "/cluster/resources", params={"type": "vm"}):
                path = f"/nodes/{row['node']}/{row['type']}/{row['vmid']}"
                if row["status"] == "running":
                    api.post(f"{path}/status/stop")


@pytest.fixture(scope="module")
def template(node: Corrald) -> str:
    return node.build_template()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any, node: Corrald) -> Iterator[Any]:
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    pg.set_default_timeout(30000)
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(str(err)))
    yield pg
    ctx.close()
    assert not errors, errors  # no uncaught script error on any page


def log_in(page: Any, node: Corrald) -> None:
    page.goto(node.url + "/")
    page.fill("input[name=password]", node.password)
    page.click("button[type=submit]")
    page.wait_for_selector("#tree a[data-id='node/node1']", state="attached")


def shot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=False)


def test_login_tree_search_and_refusals(node: Corrald, page: Any, shots: Path) -> None:
    page.goto(node.url + "/")
    page.fill("input[name=username]", "admin@pve")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:has-text('authentication failure')")
    shot(page, shots, "01-login-refused")
    page.fill("input[name=password]", node.password)
    page.click("button[type=submit]")
    link = page.wait_for_selector("#tree a[data-id='node/node1']")
    assert "online" in (link.get_attribute("title") or "")
    page.wait_for_selector("#cluster:has-text('quorate')")
    page.wait_for_selector("#nodes tr[data-id='node/node1'] td.online")
    page.wait_for_selector("body[data-live=push]", state="attached")  # state is pushed
    shot(page, shots, "02-datacenter")
    # The keyboard reaches search ("/"), Enter opens the first hit.
    page.keyboard.press("/")
    page.keyboard.type("node1")
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/node/node1")
    page.wait_for_selector("h1:has-text('node1')")
    shot(page, shots, "03-node")
    # The tree by keyboard, the search cleared first (Escape): while "node1" filters
    # the tree, Datacenter is hidden and cannot take the focus.
    page.focus("#search")
    page.keyboard.press("Escape")
    page.wait_for_selector("#tree a[data-id=datacenter]", state="visible")
    page.focus("#tree a[data-id=datacenter]")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.dataset.id") == "node/node1"
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/node/node1")
    # The node's shell: admin@pve is no host account, so the host's login prompt.
    page.click("#node-shell")
    page.locator("#terminal .xterm-rows").filter(has_text="login:").wait_for()
    shot(page, shots, "03b-node-shell")
    page.go_back()
    page.click("[data-tree=type]")
    page.wait_for_selector("#tree details[data-group='t:storage'] a[data-id='storage/node1/local']")
    page.click("#tree a[data-id='storage/node1/local']")
    page.wait_for_selector("h1:has-text('local on node1')")
    # Upload an ISO with progress, see it listed, delete it.
    iso = shots / "tiny.iso"
    iso.write_bytes(b"\0" * (2 << 20))
    page.on("dialog", lambda dialog: dialog.accept())
    page.select_option("#upload select[name=content]", "iso")
    page.set_input_files("#upload input[type=file]", str(iso))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#content-list tr[data-volid='local:iso/tiny.iso']")
    shot(page, shots, "04-storage")
    page.click("button[aria-label='Delete local:iso/tiny.iso']")
    page.wait_for_selector("#content-list tr[data-volid='local:iso/tiny.iso']", state="detached")
    iso.unlink()


def test_create_a_ct_with_the_wizard_start_it_and_use_its_terminal(
    node: Corrald, template: str, page: Any, shots: Path
) -> None:
    log_in(page, node)
    page.click("#create-ct")
    page.wait_for_selector("input[name=vmid]")
    # (not wait_for_function: the page's CSP forbids the eval it uses)
    wait_for(lambda: page.input_value("input[name=vmid]") != "", 20, 0.1, "the next free ID")
    vmid = int(page.input_value("input[name=vmid]"))
    page.fill("input[name=hostname]", "wizard-ct")
    shot(page, shots, "05-wizard-general")
    page.click("#wizard-next")
    page.wait_for_selector(f"select[name=ostemplate] option[value='{template}']", state="attached")
    page.click("#wizard-next")
    page.wait_for_selector("select[name=storage]")
    page.fill("input[name=size]", "1")
    page.click("#wizard-next")
    page.fill("input[name=memory]", "64")
    page.click("#wizard-next")
    page.wait_for_selector("input[name=bridge]")  # no network: the terminal needs none
    page.click("#wizard-next")
    page.wait_for_selector("#wizard-summary")
    assert page.is_checked("input[name=start]")
    shot(page, shots, "06-wizard-confirm")
    page.click("#wizard-create")
    # The task appears in the panel, its log opens, and it finishes OK.
    page.wait_for_selector(f"#tasklist td:has-text('Create CT {vmid}')")
    page.wait_for_selector("#tasklog-title[data-state='OK']", timeout=120000)
    page.wait_for_selector(f"#tree a[data-id='lxc/{vmid}']")
    page.wait_for_selector("#guest-status:has-text('running')", timeout=60000)
    shot(page, shots, "07-guest-summary")

    page.click("a[href$='/console']")
    page.wait_for_selector("#console-state:has-text('Connected')")
    rows = page.locator("#terminal .xterm-rows")
    rows.filter(has_text="#").wait_for()  # the shell prompt
    number = random.randint(1000, 9999)
    page.click("#terminal")
    page.keyboard.type(f"echo hello-$(({number}*3))")
    page.keyboard.press("Enter")
    rows.filter(has_text=f"hello-{number * 3}").wait_for()
    shot(page, shots, "08-terminal")


def test_create_a_vm_with_the_wizard(node: Corrald, page: Any, shots: Path) -> None:
    log_in(page, node)
    page.click("#create-vm")
    page.wait_for_selector("input[name=vmid]")
    wait_for(lambda: page.input_value("input[name=vmid]") != "", 20, 0.1, "the next free ID")
    vmid = int(page.input_value("input[name=vmid]"))
    page.fill("input[name=name]", "wizard-vm")
    page.click("#wizard-next")
    page.wait_for_selector("select[name=iso]")
    page.click("#wizard-next")
    page.fill("input[name=size]", "1")
    page.click("#wizard-next")
    page.fill("input[name=memory]", "128")
    kvm = page.wait_for_selector("input[name=kvm]")
    # This machine has no VT-x/AMD-V: the wizard says so and creates a TCG guest.
    assert kvm.is_disabled() and not kvm.is_checked()
    shot(page, shots, "22-vm-wizard-cpu")
    page.click("#wizard-next")
    page.click("#wizard-next")
    page.wait_for_selector("input[name=ci]")  # cloud-init: left off here
    page.click("#wizard-next")
    summary = page.wait_for_selector("#wizard-summary").inner_text()
    assert "kvm\t0" in summary and "local:1" in summary
    page.click("#wizard-create")
    page.wait_for_selector(f"#tasklist td:has-text('Create VM {vmid}')")
    page.wait_for_selector("#tasklog-title[data-state='OK']", timeout=120000)
    page.wait_for_selector(f"#tree a[data-id='qemu/{vmid}']")
    page.wait_for_selector("#guest-status:has-text('stopped')")
    config = node.session().data("GET", f"/nodes/node1/qemu/{vmid}/config")
    assert config["name"] == "wizard-vm" and config["kvm"] == 0 and config["memory"] == 128
    node.session().run_task("DELETE", f"/nodes/node1/qemu/{vmid}", params={"purge": 1})


def test_task_panel_power_operations_and_pending_config(
    node: Corrald, template: str, page: Any, shots: Path
) -> None:
    api = node.session()
    vmid = random.randint(60000, 69999)
    api.run_task("POST", "/nodes/node1/lxc", data={
        "vmid": vmid, "ostemplate": template, "rootfs": "local:1", "memory": 64,
        "hostname": "before",
    })  # fmt: skip
    log_in(page, node)
    page.click(f"#tree a[data-id='lxc/{vmid}']")
    page.wait_for_selector("#guest-status:has-text('stopped')")
    page.click("button[data-op=start]")
    page.wait_for_selector(f"#tasklist td:has-text('Start CT {vmid}')")
    page.wait_for_selector("#tasklog-title[data-state='OK']", timeout=60000)
    page.wait_for_selector("#guest-status:has-text('running')")
    page.wait_for_selector("button[data-op=shutdown]")

    page.click("a[href$='/config']")
    page.click("button[aria-label='Edit hostname']")
    page.fill("input[name=hostname]", "after")
    shot(page, shots, "09-config-edit")
    page.keyboard.press("Enter")
    row = page.wait_for_selector("#config tr.pending[data-key=hostname]")
    assert "before" in row.inner_text() and "after" in row.inner_text()
    shot(page, shots, "10-config-pending")
    config = api.data("GET", f"/nodes/node1/lxc/{vmid}/config", params={"current": 1})
    assert config["hostname"] == "before"  # the running CT keeps it until its next start
    # A bad value: the API's own message is shown.
    page.click("button[aria-label='Edit memory']")
    page.fill("input[name=memory]", "1")
    page.keyboard.press("Enter")
    toast = page.wait_for_selector("#toast:not([hidden]):not(.info)")
    assert "memory" in toast.inner_text()
    shot(page, shots, "11-config-error")

    # A CT on a dir storage cannot be snapshotted: the page says why, in the API's words.
    page.click("a[href$='/snapshots']")
    page.wait_for_selector("#snapshots tr[data-snap=current]")
    page.fill("#take-snapshot input[name=snapname]", "before_upgrade")
    page.click("#take-snapshot button[type=submit]")
    refusal = api.post(f"/nodes/node1/lxc/{vmid}/snapshot", data={"snapname": "before_upgrade"})
    assert refusal.status_code >= 400
    page.wait_for_selector(
        f"#toast:not([hidden]):not(.info):has-text('{refusal.json()['message'][:30]}')"
    )
    shot(page, shots, "20-snapshot-refused")

    # Tags set like any key; the tree's tag view groups by them.
    page.click("a[href$='/config']")
    page.fill("#add-key input[name=key]", "tags")
    page.fill("#add-key input[name=value]", "web")
    page.click("#add-key button[type=submit]")
    page.wait_for_selector("#config tr[data-key=tags]")
    page.click("[data-tree=tag]")
    page.wait_for_selector(f"#tree details[data-group='tag:web'] a[data-id='lxc/{vmid}']")
    page.click("[data-tree=server]")

    # A backup from the summary: the task shows up and ends well.
    page.on("dialog", lambda dialog: dialog.accept(dialog.default_value))
    page.click("a[href$='/summary']")
    page.click("#act-backup")
    page.wait_for_selector(f"#tasklist td:has-text('Backup {vmid}')")
    page.wait_for_selector("#tasklog-title[data-state='OK']", timeout=120000)
    shot(page, shots, "21-backup-task")


def test_permissions_pages_and_the_pool_tree(
    node: Corrald, template: str, page: Any, shots: Path
) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, node)
    page.click("#tree a[data-id='access']")
    page.click("a[href='#/access/groups']")
    page.fill("#add-group input[name=groupid]", "ops")
    page.fill("#add-group input[name=comment]", "operators")
    page.click("#add-group button[type=submit]")
    page.wait_for_selector("tr[data-group=ops]")
    page.click("a[href='#/access/users']")
    page.fill("#add-user input[name=userid]", "frank@pve")
    page.fill("#add-user input[name=password]", "long enough secret")
    page.fill("#add-user input[name=groups]", "ops")
    page.click("#add-user button[type=submit]")
    row = page.wait_for_selector("tr[data-user='frank@pve']")
    assert "ops" in row.inner_text()
    shot(page, shots, "17-users")
    page.click("a[href='#/access/acl']")
    page.fill("#add-acl input[name=path]", "/vms")
    page.fill("#add-acl input[name=ugid]", "ops")
    page.select_option("#add-acl select[name=kind]", "groups")
    page.select_option("#add-acl select[name=role]", "PVEVMUser")
    page.click("#add-acl button[type=submit]")
    page.wait_for_selector("td:has-text('PVEVMUser')")
    shot(page, shots, "18-acl")
    # A bad value shows the API's message.
    page.fill("#add-acl input[name=path]", "no-slash")
    page.fill("#add-acl input[name=ugid]", "ops")
    page.click("#add-acl button[type=submit]")
    assert "path" in page.wait_for_selector("#toast:not([hidden]):not(.info)").inner_text()
    page.click("button[aria-label='Remove PVEVMUser of ops on /vms']")
    page.wait_for_selector("td:has-text('PVEVMUser')", state="detached")

    page.click("a[href='#/access/pools']")
    page.fill("#add-pool input[name=poolid]", "web")
    page.click("#add-pool button[type=submit]")
    page.wait_for_selector("tr[data-pool=web]")
    page.fill("#pool-members input[name=poolid]", "web")
    page.fill("#pool-members input[name=storage]", "local")
    page.click("#pool-members button[type=submit]")
    page.wait_for_selector("tr[data-pool=web] td:has-text('storage/local')")
    shot(page, shots, "19-pools")
    page.click("[data-tree=pool]")
    page.wait_for_selector("#tree details[data-group='pool:web'] a[data-id='storage/node1/local']")
    page.click("[data-tree=server]")


def test_a_user_adds_totp_and_logs_in_with_a_code(node: Corrald, page: Any, shots: Path) -> None:
    from corral.cluster import totp

    node.session().post("/access/users", data={"userid": "gina@pve", "password": "gina's long pw"})
    page.goto(node.url + "/")
    page.fill("input[name=username]", "gina@pve")
    page.fill("input[name=password]", "gina's long pw")
    page.click("button[type=submit]")
    page.wait_for_selector("#tree a[data-id='access']")
    page.goto(node.url + "/#/access/tfa")
    secret = page.wait_for_selector("#totp-secret").inner_text()
    entry = {"secret": secret, "digits": 6, "period": 30, "algorithm": "SHA1"}
    page.fill("#add-totp input[name=value]", totp.code(entry, totp.current_step(entry)))
    page.fill("#add-totp input[name=password]", "gina's long pw")
    page.click("#add-totp button[type=submit]")
    page.wait_for_selector("tr[data-tfa]")
    shot(page, shots, "23-totp-added")
    page.click("#logout")
    # The password alone is not enough any more; the next code is.
    used = totp.current_step(entry)
    page.fill("input[name=username]", "gina@pve")
    page.fill("input[name=password]", "gina's long pw")
    page.click("button[type=submit]")
    page.wait_for_selector("#otp-row:not([hidden])")
    shot(page, shots, "24-login-code")
    wait_for(lambda: totp.current_step(entry) > used, 40, 0.5, "the next TOTP step")
    page.fill("input[name=otp]", totp.code(entry, totp.current_step(entry)))
    page.click("button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")
    assert page.inner_text("#who") == "gina@pve"


def test_phone_width_dark_theme_and_keyboard(node: Corrald, page: Any, shots: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, node)
    page.click("#theme")
    assert page.evaluate("document.documentElement.dataset.theme") in ("dark", "light")
    if page.evaluate("document.documentElement.dataset.theme") != "dark":
        page.click("#theme")
    assert not page.is_visible("#side")  # the tree is a drawer on a phone
    page.click("#menu")
    page.wait_for_selector("#side.open")
    shot(page, shots, "12-phone-tree-dark")
    page.click("#tree a[data-id='node/node1']")
    page.wait_for_selector("h1:has-text('node1')")
    assert not page.is_visible("#side")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the page scrolls sideways at phone width ({width} px)"
    shot(page, shots, "13-phone-node-dark")


def test_every_request_stays_on_the_node_and_logout_works(node: Corrald, page: Any) -> None:
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    log_in(page, node)
    page.click("#tasks-toggle")
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    local = (node.url + "/", node.url.replace("https://", "wss://") + "/")
    assert urls and all(u.startswith(local) for u in urls), urls


def test_a_vm_console_shows_the_guest_screen_change(
    node: Corrald, guest_files: dict[str, str], page: Any, shots: Path
) -> None:
    api = node.session()
    vmid = random.randint(50000, 59999)
    api.run_task("POST", "/nodes/node1/qemu", data={
        "vmid": vmid, "name": "screen", "memory": 128, "kvm": 0, "tablet": 0, "serial0": "socket",
        "kernel": "local:snippets/vmlinuz", "initrd": "local:snippets/initrd.img",
        "cmdline": guest_files["cmdline"],
    })  # fmt: skip
    api.run_task("POST", f"/nodes/node1/qemu/{vmid}/status/start", timeout=180)
    run = node.data_dir / "qemu"
    serial = Serial(str(run / f"{vmid}.serial0"), str(run / f"{vmid}.serial0.log"))
    serial.connect()
    try:
        wait_ready(serial, guest.MARKER_READY)
        log_in(page, node)
        page.goto(f"{node.url}/#/guest/qemu/{vmid}/console")
        page.wait_for_selector("#vnc[data-connected='1'] canvas")
        screen = "document.querySelector('#vnc canvas').toDataURL()"
        page.wait_for_timeout(1000)  # the first full frame
        before = page.evaluate(screen)
        shot(page, shots, "14-vm-console-before")
        # The guest writes on its own screen (tty0, VGA text): noVNC must show the change.
        serial.run("for i in 1 2 3 4 5 6; do echo CORRAL-ON-THE-SCREEN-$i > /dev/tty0; done")
        wait_for(lambda: page.evaluate(screen) != before, 30, 0.3, "the screen to change")
        shot(page, shots, "15-vm-console-after")
    finally:
        serial.close()
    try:
        # The same VM's serial port in the page's terminal (serial0: socket).
        page.click("#console-serial0")
        page.wait_for_selector("#console-state:has-text('Connected to serial0')")
        number = random.randint(1000, 9999)
        page.click("#terminal")
        page.keyboard.type(f"echo ser-$(({number}*3))")
        page.keyboard.press("Enter")
        page.locator("#terminal .xterm-rows").filter(has_text=f"ser-{number * 3}").wait_for()
        shot(page, shots, "15b-vm-serial")
    finally:
        api.run_task("POST", f"/nodes/node1/qemu/{vmid}/status/stop")
        api.run_task("DELETE", f"/nodes/node1/qemu/{vmid}", params={"purge": 1})


def test_a_node_graph_has_points(node: Corrald, page: Any, shots: Path) -> None:
    """History is kept in 60 s steps: wait (through the API) until two have passed."""
    api = node.session()

    def points() -> int:
        rows = api.data("GET", "/nodes/node1/rrddata", params={"timeframe": "hour"})
        return sum(1 for r in rows if r.get("cpu") is not None)

    wait_for(lambda: points() >= 2, 240, 5, "two history points of node1")
    log_in(page, node)
    page.click("#tree a[data-id='node/node1']")
    chart = page.wait_for_selector(".chart[data-points]:has-text('CPU')")
    assert int(chart.get_attribute("data-points") or 0) >= 2
    assert page.locator(".chart:has-text('CPU') polyline").count() == 1
    shot(page, shots, "16-node-graphs")
