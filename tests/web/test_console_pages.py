"""Every page of the web console, walked once in headless Chromium against a real corrald
with a running CT and a stopped TCG VM: each page shows what it is for, no script error
happens, and a screenshot of each is kept (beside those of test_console_browser.py:
$CORRAL_SCREENSHOTS, else a pytest tmp dir). The guest Backup tab is exercised for real:
a backup taken, listed, restored over the stopped CT, removed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import NEEDS_CHROMIUM, chromium, screenshot_dir
from tests.nodes import vm_node
from tests.util import Corrald

pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def node(guest_files: dict[str, str]) -> Iterator[Corrald]:
    with vm_node("crlpages", guest_files) as (daemon, _):
        yield daemon


def test_walk_every_page(
    node: Corrald, guest_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    shots = screenshot_dir(tmp_path_factory)
    api = node.session()
    template = node.build_template()
    ct, vm = random.randint(70000, 74999), random.randint(75000, 79999)
    api.run_task("POST", "/nodes/node1/lxc", data={
        "vmid": ct, "ostemplate": template, "rootfs": "local:1", "memory": 64,
        "hostname": "walker", "start": 1,
    })  # fmt: skip
    api.run_task("POST", "/nodes/node1/qemu", data={
        "vmid": vm, "name": "walker-vm", "memory": 128, "kvm": 0, "serial0": "socket",
        "kernel": "local:snippets/vmlinuz", "initrd": "local:snippets/initrd.img",
        "cmdline": guest_files["cmdline"], "tags": "walk",
    })  # fmt: skip
    with chromium() as browser:
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
        page = ctx.new_page()
        page.set_default_timeout(30000)
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.on("dialog", lambda dialog: dialog.accept())

        def visit(name: str, hash_: str, ready: str) -> None:
            page.goto(f"{node.url}/{hash_}")
            page.wait_for_selector(ready)
            page.screenshot(path=str(shots / f"page-{name}.png"))

        try:
            page.goto(node.url + "/")
            page.screenshot(path=str(shots / "page-00-login.png"))
            page.fill("input[name=password]", node.password)
            page.click("button[type=submit]")
            page.wait_for_selector(f"#tree a[data-id='qemu/{vm}']")
            visit("01-datacenter", "#/", "#nodes tr[data-id='node/node1']")
            visit("02-node", "#/node/node1", "h1:has-text('node1')")
            for tab, ready in (("services", "#services"), ("network", "#network"),
                               ("syslog", "pre.log")):  # fmt: skip
                if page.query_selector(f"#node-tab-{tab}"):
                    visit(f"02-node-{tab}", f"#/node/node1/{tab}", ready)
            visit("03-storage", "#/storage/node1/local", "h1:has-text('local on node1')")

            base = f"#/guest/lxc/{ct}"
            visit("10-ct-summary", base, "#guest-status:has-text('running')")
            visit("11-ct-resources-options", f"{base}/config", "#config tr[data-key=memory]")
            visit("12-ct-snapshots", f"{base}/snapshots", "#snapshots tr[data-snap=current]")
            visit("13-ct-console", f"{base}/console", "#console-state:has-text('Connected')")
            page.locator("#terminal .xterm-rows").filter(has_text="#").wait_for()
            page.screenshot(path=str(shots / "page-13-ct-console.png"))
            # Backup tab: back up now (a task), then the archive is listed.
            visit("14-ct-backup-empty", f"{base}/backup", "#backups-none")
            page.select_option("#backup-now select[name=storage]", "local")
            page.select_option("#backup-now select[name=mode]", "stop")
            page.click("#backup-now button[type=submit]")
            page.wait_for_selector(f"#tasklist td:has-text('Backup {ct}')")
            page.wait_for_selector(f"#tasklog-title[data-state='OK']:has-text('Backup {ct}')",
                                   timeout=120000)  # fmt: skip
            row = page.wait_for_selector("#backups tr[data-volid]")
            volid = row.get_attribute("data-volid") or ""
            assert volid.startswith(f"local:backup/vzdump-lxc-{ct}-"), volid
            page.screenshot(path=str(shots / "page-14-ct-backup.png"))
            # Restore needs the CT stopped (mode stop left it running again).
            api.run_task("POST", f"/nodes/node1/lxc/{ct}/status/stop")
            page.click(f"button[aria-label='Restore {volid}']")
            page.wait_for_selector(f"#tasklog-title[data-state='OK']:has-text('Restore CT {ct}')",
                                   timeout=120000)  # fmt: skip
            assert api.data("GET", f"/nodes/node1/lxc/{ct}/config")["hostname"] == "walker"
            page.click(f"button[aria-label='Remove {volid}']")
            page.wait_for_selector(f"#backups tr[data-volid='{volid}']", state="detached",
                                   timeout=60000)  # fmt: skip

            base = f"#/guest/qemu/{vm}"
            visit("20-vm-summary", base, "#guest-status:has-text('stopped')")
            visit("21-vm-hardware-options", f"{base}/config", "#config tr[data-key=memory]")
            visit("22-vm-snapshots", f"{base}/snapshots", "#snapshots tr[data-snap=current]")
            visit("23-vm-backup", f"{base}/backup", "#backups-none")
            visit("24-vm-console-stopped", f"{base}/console", "text=The VM is not running")

            for i, (tab, ready) in enumerate((
                ("users", "tr[data-user='admin@pve']"), ("groups", "#add-group"),
                ("pools", "#add-pool"), ("acl", "#add-acl"),
                ("tokens", "#content h1:has-text('Permissions')"),
                ("realms", "#realms tr[data-realm=pve]"), ("tfa", "#totp-secret"),
            )):  # fmt: skip
                visit(f"3{i}-permissions-{tab}", f"#/access/{tab}", ready)

            # Tasks: the panel with the last task's log open.
            page.goto(f"{node.url}/#/")
            page.click("#tasklist tbody tr")
            page.wait_for_selector("#tasklog-title[data-state]")
            page.screenshot(path=str(shots / "page-40-tasks.png"))
            # The tag tree and the type tree.
            page.click("[data-tree=tag]")
            page.wait_for_selector(f"#tree details[data-group='tag:walk'] a[data-id='qemu/{vm}']")
            page.screenshot(path=str(shots / "page-41-tree-by-tag.png"))
            page.click("[data-tree=server]")
        finally:
            ctx.close()
    assert not errors, errors
    names = sorted(p.name for p in Path(shots).glob("page-*.png"))
    print(f"\n{len(names)} page screenshots in {shots}")
    api.run_task("DELETE", f"/nodes/node1/qemu/{vm}", params={"purge": 1})
