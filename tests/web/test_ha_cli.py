"""`corral ha` and `corral node maintenance` against a real node, as a user types them."""

from __future__ import annotations

import json

from tests.util import Corrald, wait_for
from tests.web.test_cli import run


def test_status_bad_resource_and_maintenance(corrald: Corrald) -> None:
    text = wait_for(
        lambda: (
            (out := run(corrald, "corral", "ha", "status").stdout)
            and "lrm node1 (active" in out
            and out
        ),
        20,
        0.3,
        "an HA master and an active LRM",
    )
    assert "quorum OK" in text and "master node1 (active)" in text
    assert "lrm node1 (active, online)" in text
    bad = run(corrald, "corral", "ha", "add", "ct:999", check=False)
    assert bad.returncode == 1 and "no such guest 999" in bad.stderr
    bad = run(corrald, "corral", "ha", "add", "xx:1", check=False)
    assert bad.returncode == 1 and "invalid HA resource ID" in bad.stderr
    assert run(corrald, "corral", "ha", "migrate", check=False).returncode == 2
    run(corrald, "corral", "node", "maintenance", "enable", "node1")

    def requested() -> bool:
        out = run(corrald, "corral", "ha", "status", "--verbose").stdout
        doc = json.loads(out[: out.rindex("}") + 1])
        return bool(doc["manager_status"].get("node_request", {}).get("node1"))

    wait_for(requested, 20, 0.3, "maintenance recorded by the CRM")
    wait_for(
        lambda: "lrm node1 (active, maintenance)" in run(corrald, "corral", "ha", "status").stdout,
        20,
        0.3,
        "node1 in maintenance",
    )
    run(corrald, "corral", "node", "maintenance", "disable", "node1")
    wait_for(lambda: not requested(), 20, 0.3, "maintenance cleared")
