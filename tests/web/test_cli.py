"""corralsh and corral against a real node, as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.util import VENV_BIN, Corrald


def run(
    node: Corrald, tool: str, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "CORRAL_DATA_DIR": str(node.data_dir), **(env or {})}
    proc = subprocess.run(
        [str(VENV_BIN / tool), *args], capture_output=True, text=True, timeout=120, env=full_env
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_get_in_every_output_format(corrald: Corrald) -> None:
    text = run(corrald, "corralsh", "get", "/nodes").stdout
    assert "node1" in text and "online" in text
    data = json.loads(run(corrald, "corralsh", "get", "/version", "--output-format", "json").stdout)
    assert data["product"] == "corral"
    pretty = run(
        corrald, "corralsh", "get", "/cluster/status", "--output-format", "json-pretty"
    ).stdout
    assert json.loads(pretty)[0]["quorate"] == 1 and "\n    " in pretty
    assert (
        yaml.safe_load(
            run(corrald, "corralsh", "get", "/version", "--output-format", "yaml").stdout
        )["product"]
        == "corral"
    )


def test_ls_usage_create_and_errors(corrald: Corrald) -> None:
    assert "status" in run(corrald, "corralsh", "ls", "/nodes/node1").stdout.split()
    usage = run(corrald, "corralsh", "usage", "/cluster/nextid", "--verbose").stdout
    assert "corralsh get /cluster/nextid [--vmid <integer>]" in usage
    vmid = run(corrald, "corralsh", "create", "/cluster/nextid").stdout.strip()
    assert int(vmid) >= 100
    bad = run(corrald, "corralsh", "create", "/access/users", "--userid", "x y", check=False)
    assert bad.returncode == 2 and "userid:" in bad.stderr


def test_remote_with_token_and_with_login(corrald: Corrald) -> None:
    tok = corrald.local().call("POST", "/access/users/admin@pve/token/cli", {"privsep": 0})
    remote = ["--host", "127.0.0.1", "--port", str(corrald.port), "--cafile", corrald.ca]
    out = run(
        corrald, "corralsh", "get", "/version", *remote, "--token", f"admin@pve!cli={tok['value']}"
    ).stdout
    assert "corral" in out
    out = run(
        corrald,
        "corralsh",
        "get",
        "/nodes",
        *remote,
        "--user",
        "admin@pve",
        env={"CORRAL_PASSWORD": corrald.password},
    ).stdout
    assert "node1" in out
    denied = run(
        corrald,
        "corralsh",
        "get",
        "/nodes",
        *remote,
        "--user",
        "admin@pve",
        env={"CORRAL_PASSWORD": "wrong"},
        check=False,
    )
    assert denied.returncode != 0 and "authentication failure" in denied.stderr


def test_corral_status(corrald: Corrald) -> None:
    out = run(corrald, "corral", "--data-dir", str(corrald.data_dir), "status").stdout
    assert "quorate" in out and "node1" in out and "online" in out


def test_corral_start_and_stop(tmp_path: Path) -> None:
    from tests.util import free_ports

    data = tmp_path / "n"
    port, etcd = free_ports(1), free_ports(2)
    env = {**os.environ}
    start = subprocess.run(
        [
            str(VENV_BIN / "corral"),
            "--data-dir",
            str(data),
            "start",
            "--listen",
            f"127.0.0.1:{port}",
            "--node",
            "clinode",
            "--etcd-port",
            str(etcd),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        assert f"https://127.0.0.1:{port}/" in start.stdout
        password = (data / "initial-admin-password").read_text().strip()
        assert f"admin@pve / {password}" in start.stdout
    finally:
        stop = subprocess.run(
            [str(VENV_BIN / "corral"), "--data-dir", str(data), "stop"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert stop.returncode == 0 and "stopped" in stop.stdout


@pytest.mark.parametrize("argv", [["get"], ["frobnicate", "/x"]])
def test_bad_invocations(corrald: Corrald, argv: list[str]) -> None:
    proc = run(corrald, "corralsh", *argv, check=False)
    assert proc.returncode == 2
