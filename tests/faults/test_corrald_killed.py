"""kill -9 corrald in the middle of a CT create and of a CT start.

The task is frozen at a known step (CORRAL_TEST_PAUSE_AT: a line the driver
logs), corrald is killed, restarted, and then: the interrupted task is ended
as "interrupted by node restart" with what recovery did in its log; no guest is
lost or running twice, no volume orphaned, no lock or task stuck — checked
through the API and against lxc, the storage directory and etcd.
"""

from __future__ import annotations

import pytest

from corral.cluster.tasks import INTERRUPTED
from tests.faults.conftest import install_template
from tests.faults.world import (
    NODE,
    assert_clean,
    guest_gone,
    kill9,
    log_text,
    lxc_names,
    start,
    task_status,
    volumes_of,
    wait_log,
)
from tests.util import Corrald

pytestmark = pytest.mark.timeout(300)


def test_killed_mid_create_leaves_nothing_half_made(node: Corrald, vmid: int) -> None:
    start(node, pause_at="allocated rootfs")
    template = install_template(node)
    s = node.session()
    local = node.data_dir / "local"
    upid = s.data(
        "POST",
        f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": template, "rootfs": "local:1"},
    )
    wait_log(s, upid, "allocated rootfs")
    assert volumes_of(local, vmid) != []  # the volume exists: the create is half-way
    kill9(node)

    start(node)
    s = node.session()
    st = task_status(s, upid)
    assert (st["status"], st["exitstatus"]) == ("stopped", INTERRUPTED)
    text = log_text(s, upid)
    assert "node restarted while this task ran" in text
    assert f"freed local:{vmid}/subvol-{vmid}-disk-0.subvol" in text
    assert f"TASK ERROR: {INTERRUPTED}" in text
    guest_gone(node, s, vmid, local)
    assert_clean(node, s)
    # The ID is free again, and a create with it works.
    s.run_task(
        "POST",
        f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": template, "rootfs": "local:1"},
    )
    s.run_task("DELETE", f"/nodes/{NODE}/lxc/{vmid}")
    guest_gone(node, s, vmid, local)


def test_killed_mid_start_keeps_one_truthful_guest(node: Corrald, vmid: int) -> None:
    start(node, pause_at=f"CT {vmid} started")
    template = install_template(node)
    s = node.session()
    s.run_task(
        "POST",
        f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": template, "rootfs": "local:1"},
    )
    upid = s.data("POST", f"/nodes/{NODE}/lxc/{vmid}/status/start")
    wait_log(s, upid, f"CT {vmid} started")  # the driver is done, the task is not
    kill9(node)
    assert str(vmid) in lxc_names(node, active=True)  # the container outlives corrald

    start(node)
    s = node.session()
    st = task_status(s, upid)
    assert (st["status"], st["exitstatus"]) == ("stopped", INTERRUPTED)
    assert s.data("GET", f"/nodes/{NODE}/lxc/{vmid}/status/current")["status"] == "running"
    # Starting again is refused: it runs once, not twice.
    again = s.data("POST", f"/nodes/{NODE}/lxc/{vmid}/status/start")
    assert "already running" in s.wait_task(again)["exitstatus"]
    assert lxc_names(node, active=True) == {str(vmid)}
    assert_clean(node, s)
    s.run_task("POST", f"/nodes/{NODE}/lxc/{vmid}/status/stop")
    assert lxc_names(node, active=True) == set()
    s.run_task("DELETE", f"/nodes/{NODE}/lxc/{vmid}")
    guest_gone(node, s, vmid, node.data_dir / "local")
    assert_clean(node, s)
