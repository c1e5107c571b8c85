"""The web console in headless Chromium against a real 3-node lab: log in on node1, find
the three nodes and a CT in the tree, migrate the CT from node2 to node3 through the
console's migrate dialog and see the tree follow (pushed by node1's feed, no reload),
watch the task in the task panel, and open the CT's terminal through node1, which does
not own it. Screenshots go where the other browser tests keep theirs.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from corral.cluster import lab as labmod
from corral.lxc import templates
from tests.browser import NEEDS_CHROMIUM, chromium, screenshot_dir
from tests.util import wait_for

PREFIX = "crlk"
SUBNET = "10.249.94.0/24"
# The issue: live state within 2 s, pushed. The slack covers this test's own polling.
PUSH_WITHIN = 2.0
SLACK = 0.5
pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labmod.Lab]:
    lab_dir = str(tmp_path_factory.mktemp("lab") / "lab")
    labmod.down(lab_dir, quiet=True)
    lab = labmod.up(lab_dir, 3, SUBNET, PREFIX)  # cleans up after itself if it fails
    try:
        yield lab
    finally:
        labmod.down(lab_dir, quiet=True)


class Api:
    """admin@pve on one lab node, over the lab network, verified with the cluster CA."""

    def __init__(self, lab: labmod.Lab, name: str) -> None:
        first = lab.nodes[0]
        self.url = f"{lab.node(name).url}api2/json"
        self.password = Path(first.data_dir, "initial-admin-password").read_text().strip()
        self.s = requests.Session()
        # Per request: REQUESTS_CA_BUNDLE in the environment would override a session's.
        self.ca = str(Path(first.data_dir, "ssl", "ca.pem"))
        r = self.s.post(f"{self.url}/access/ticket", timeout=15, verify=self.ca,
                        data={"username": "admin@pve", "password": self.password})  # fmt: skip
        r.raise_for_status()
        data = r.json()["data"]
        self.s.cookies.set("PVEAuthCookie", data["ticket"])
        self.s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]

    def data(self, method: str, path: str, **params: Any) -> Any:
        where = {"params": params} if method == "GET" else {"data": params}
        r = self.s.request(method, self.url + path, timeout=30, verify=self.ca, **where)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()["data"]

    def task(self, method: str, path: str, **params: Any) -> None:
        upid = self.data(method, path, **params)
        node = upid.split(":")[1]
        status = wait_for(
            lambda: (lambda st: st if st["status"] == "stopped" else None)(
                self.data("GET", f"/nodes/{node}/tasks/{upid}/status")
            ),
            120, 0.2, f"task {upid}",
        )  # fmt: skip
        assert status["exitstatus"] == "OK", status


def _watch_task_end(api: Api, vmid: int, ended: dict[str, Any], stop: threading.Event) -> None:
    """Notes (monotonic) when the CT's migrate task is first seen stopped, polling the
    API every 0.1 s: the moment the tree's update is measured from."""
    while not stop.is_set():
        try:
            rows = api.data("GET", "/cluster/tasks")
        except (requests.RequestException, AssertionError):
            rows = []
        for t in rows:
            if t["type"] == "vzmigrate" and t["id"] == str(vmid) and t.get("endtime"):
                ended.setdefault("at", time.monotonic())
                ended["status"] = t.get("status")
                return
        stop.wait(0.1)


def _print_logs(lab: labmod.Lab) -> None:
    """What the nodes said (the lab's logs go with the lab)."""
    for n in lab.nodes:
        log = Path(n.data_dir, "corrald.log")
        if log.exists():
            print(f"--- {n.name} corrald.log (last lines)")
            print("\n".join(log.read_text(errors="replace").splitlines()[-25:]))


def test_migrate_in_the_browser_the_tree_follows_and_the_terminal_answers_through_node1(
    lab: labmod.Lab, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shots = screenshot_dir(tmp_path_factory)
    api = Api(lab, "node1")
    cache = Path(lab.dir, "shared", "template", "cache")
    archive = templates.build_busybox(str(cache), log=lambda _m: None)
    vmid = 90400
    api.task("POST", "/nodes/node2/lxc", vmid=vmid, hostname="wanderer", memory=64,
             ostemplate=f"{labmod.SHARED_STORAGE}:vztmpl/{os.path.basename(archive)}",
             rootfs=f"{labmod.SHARED_STORAGE}:1", start=1)  # fmt: skip
    node1 = lab.node("node1").url.rstrip("/")

    with chromium() as browser:
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
        page = ctx.new_page()
        page.set_default_timeout(30000)
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        requests_seen: list[tuple[float, str]] = []
        page.on("request", lambda req: requests_seen.append((time.monotonic(), req.url)))
        pushed: dict[str, float] = {}  # when the feed first carried the CT on node3

        def on_frame(payload: Any) -> None:
            if isinstance(payload, str) and f'"lxc/{vmid}"' in payload and "at" not in pushed:
                rows = json.loads(payload).get("resources") or []
                if any(r.get("id") == f"lxc/{vmid}" and r.get("node") == "node3" for r in rows):
                    pushed["at"] = time.monotonic()

        sockets: list[str] = []

        def on_socket(ws: Any) -> None:
            sockets.append(ws.url)
            if "/cluster/feed" in ws.url:
                ws.on("framereceived", on_frame)

        page.on("websocket", on_socket)
        try:
            # Log in on node1; the three nodes and the CT (on node2) are in the tree.
            page.goto(node1 + "/")
            page.fill("input[name=password]", api.password)
            page.screenshot(path=str(shots / "lab-01-login.png"))
            page.click("button[type=submit]")
            for n in ("node1", "node2", "node3"):
                link = page.wait_for_selector(f"#tree a[data-id='node/{n}']")
                assert "online" in (link.get_attribute("title") or "")
            page.wait_for_selector("#cluster:has-text('3 of 3 nodes online')")
            page.wait_for_selector(f"#tree details[data-group='n:node2'] a[data-id='lxc/{vmid}']")
            page.wait_for_selector("body[data-live=push]", state="attached")
            page.screenshot(path=str(shots / "lab-02-datacenter.png"))

            page.click(f"#tree a[data-id='lxc/{vmid}']")
            page.wait_for_selector("#guest-status:has-text('running')")
            page.wait_for_selector("#guest-node:has-text('on node2')")
            page.evaluate("window.corralNoReload = 1")  # gone if the page reloads

            # The migrate dialog offers what GET .../migrate allows: node1 and node3.
            page.click("#act-migrate")
            page.wait_for_selector("#migrate-dialog select[name=target] option[value=node3]",
                                   state="attached")  # fmt: skip
            options = page.eval_on_selector_all(
                "#migrate-dialog select[name=target] option", "os => os.map(o => o.value)"
            )
            assert sorted(options) == ["node1", "node3"]
            page.select_option("#migrate-dialog select[name=target]", "node3")
            page.screenshot(path=str(shots / "lab-03-migrate-dialog.png"))
            ended: dict[str, Any] = {}
            stop = threading.Event()
            watcher = threading.Thread(
                target=_watch_task_end, args=(Api(lab, "node3"), vmid, ended, stop), daemon=True
            )
            watcher.start()
            clicked = time.monotonic()
            page.click("#migrate-go")
            try:
                # The task shows in the panel; the tree moves the CT under node3.
                page.wait_for_selector(f"#tasklist td:has-text('Migrate CT {vmid}')")
                page.wait_for_selector(
                    f"#tree details[data-group='n:node3'] a[data-id='lxc/{vmid}']", timeout=90000
                )
                moved = time.monotonic()
                page.wait_for_selector("#tasklog-title[data-state='OK']", timeout=90000)
                wait_for(lambda: "at" in ended, 30, 0.1, "the migrate task's end")
            finally:
                stop.set()
                watcher.join(5)
            assert ended["status"] == "OK", ended
            page.wait_for_selector(
                f"#tasklist tr:has(td:has-text('Migrate CT {vmid}')) td.OK", state="attached"
            )
            page.wait_for_selector("#guest-node:has-text('on node3')")
            assert not page.query_selector(
                f"#tree details[data-group='n:node2'] a[data-id='lxc/{vmid}']"
            )
            page.screenshot(path=str(shots / "lab-04-migrated-task-panel.png"))
            lag = moved - ended["at"]
            print(f"\ntree under node3 {lag:+.2f} s after the task's end "
                  f"(feed frame {pushed.get('at', float('nan')) - ended['at']:+.2f} s; "
                  f"whole migration {ended['at'] - clicked:.2f} s)")  # fmt: skip
            assert lag <= PUSH_WITHIN + SLACK, lag
            # Pushed: the feed carried it, nothing reloaded, and the page did not poll
            # /cluster/resources after the task ended.
            assert "at" in pushed and pushed["at"] <= moved + SLACK
            assert page.evaluate("window.corralNoReload") == 1
            polled = [u for t, u in requests_seen if t > ended["at"] and "/cluster/resources" in u]
            assert not polled, polled

            # The CT's terminal through node1 (the CT is on node3): the shell answers.
            page.click("a[href$='/console']")
            page.wait_for_selector("#console-state:has-text('Connected')")
            rows = page.locator("#terminal .xterm-rows")
            rows.filter(has_text="#").wait_for()
            number = random.randint(1000, 9999)
            page.click("#terminal")
            page.keyboard.type(f"echo lab-$(({number}*3)) $(hostname)")
            page.keyboard.press("Enter")
            rows.filter(has_text=f"lab-{number * 3} wanderer").wait_for()
            page.screenshot(path=str(shots / "lab-05-terminal-via-node1.png"))
            opened = [u for _, u in requests_seen if u.endswith(f"/lxc/{vmid}/termproxy")]
            assert opened and all(u.startswith(f"{node1}/api2/json/nodes/node3/") for u in opened)
            terminals = [u for u in sockets if "/vncwebsocket" in u]
            wss = node1.replace("https:", "wss:")
            assert terminals and all(
                u.startswith(f"{wss}/api2/json/nodes/node3/") for u in terminals
            )
        except BaseException:
            page.screenshot(path=str(shots / "lab-99-failed.png"))
            _print_logs(lab)
            raise
        finally:
            ctx.close()
    assert not errors, errors  # no uncaught script error on any page
    # liblxc itself runs the CT on node3 and nowhere else.
    running = {
        n.name: labmod._run(
            labmod.in_node(n, ["lxc-ls", "-P", str(Path(n.data_dir, "lxc")), "--running", "-1"])
        ).stdout.split()
        for n in lab.nodes
    }
    assert [n for n, ids in running.items() if str(vmid) in ids] == ["node3"], running
