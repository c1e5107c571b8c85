"""Test helpers: free ports, a real corrald process, API sessions."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3

from corral.cluster.client import Client

urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

VENV_BIN = Path(sys.executable).parent


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1) -> int:
    """A base port p such that p..p+count-1 are free on loopback."""
    for _ in range(500):
        base = random.randint(20000, 40000)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free ports")


def wait_for(
    predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as err:  # noqa: BLE001 - keep polling
            last = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def vmid_picker(low: int, high: int) -> Callable[[], int]:
    """A suite's own VMID range: each call a random ID in [low, high] not handed out before
    in this process, so suites that share a daemon or an etcd never collide."""
    used: set[int] = set()

    def pick() -> int:
        while True:
            vmid = random.randint(low, high)
            if vmid not in used:
                used.add(vmid)
                return vmid

    return pick


def assert_golden(got: str, expected: Path) -> None:
    """`got` must equal the golden file. `CORRAL_REGEN_GOLDEN=1` rewrites it (review the
    diff); a missing one is written out and the test fails so that it gets reviewed."""
    if os.environ.get("CORRAL_REGEN_GOLDEN") == "1" or not expected.exists():
        existed = expected.exists()
        expected.write_text(got)
        if not existed:
            raise AssertionError(f"wrote missing {expected}; review and commit it")
    assert got == expected.read_text()


class Corrald:
    """A real corrald subprocess with its private etcd, on free loopback ports."""

    def __init__(self, data_dir: Path, *, node: str = "node1", extra: list[str] | None = None):
        self.data_dir = data_dir
        self.node = node
        self.port = free_ports(1)
        self.etcd_port = free_ports(2)
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = ""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Corrald:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "test-corrald.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "corrald"),
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--node",
                self.node,
                "--etcd-port",
                str(self.etcd_port),
                *self.extra,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corrald exited ({self.proc.returncode}):\n{self.log_tail()}")
            if (self.data_dir / "corrald.pid").exists():
                try:
                    self.local().call("GET", "/version")
                    break
                except Exception:  # noqa: BLE001
                    pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"corrald not ready in {timeout} s:\n{self.log_tail()}")
        pw = self.data_dir / "initial-admin-password"
        if pw.exists():
            self.password = pw.read_text().strip()
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.data_dir / "test-corrald.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def local(self) -> Client:
        return Client(socket_path=str(self.data_dir / "corrald.sock"), timeout=30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def etcd_pid(self) -> int | None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"etcd") and str(self.data_dir).encode() in b" ".join(cmd):
                return int(entry.name)
        return None

    # -- HTTP sessions ------------------------------------------------------
    @property
    def ca(self) -> str:
        return str(self.data_dir / "ssl" / "ca.pem")

    def session(self, user: str = "admin@pve", password: str | None = None) -> ApiSession:
        return ApiSession(self.url, self.ca).login(
            user, self.password if password is None else password
        )

    def anonymous(self) -> ApiSession:
        return ApiSession(self.url, self.ca)

    # -- what several suites ask of a node -------------------------------------
    def build_template(self, name: str = "busybox", timeout: float = 180) -> str:
        """`corral template build NAME` as an operator runs it; the template's volid."""
        env = {**os.environ, "CORRAL_DATA_DIR": str(self.data_dir)}
        argv = [str(VENV_BIN / "corral"), "--data-dir", str(self.data_dir), "template", "build",
                name]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
        return proc.stdout.strip()


class ApiSession:
    """requests against the API, verifying the node's certificate with the cluster CA."""

    def __init__(self, base: str, ca: str) -> None:
        self.base = base
        self.ca = ca
        self.http = requests.Session()
        # Passed per request: REQUESTS_CA_BUNDLE in the environment overrides
        # a session-level setting.
        self.csrf: str | None = None

    def login(self, user: str, password: str) -> ApiSession:
        r = self.http.post(
            f"{self.base}/api2/json/access/ticket",
            verify=self.ca,
            data={"username": user, "password": password},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        self.http.cookies.set("PVEAuthCookie", data["ticket"])
        self.csrf = data["CSRFPreventionToken"]
        self.ticket = data["ticket"]
        return self

    def token(self, value: str) -> ApiSession:
        self.http.headers["Authorization"] = f"PVEAPIToken={value}"
        return self

    def request(self, method: str, path: str, *, csrf: bool = True, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if csrf and self.csrf and method != "GET":
            headers["CSRFPreventionToken"] = self.csrf
        kw.setdefault("timeout", 60)
        kw.setdefault("verify", self.ca)
        return self.http.request(method, f"{self.base}/api2/json{path}", headers=headers, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def data(self, method: str, path: str, **kw: Any) -> Any:
        r = self.request(method, path, **kw)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()["data"]

    def wait_task(self, upid: str, timeout: float = 120) -> dict[str, Any]:
        node = upid.split(":")[1]

        def done() -> Any:
            st = self.data("GET", f"/nodes/{node}/tasks/{upid}/status")
            return st if st["status"] == "stopped" else None

        return wait_for(done, timeout, 0.1, f"task {upid}")

    def run_task(self, method: str, path: str, timeout: float = 120, **kw: Any) -> dict[str, Any]:
        """Start a task and wait; assert it ended OK; returns its status."""
        upid = self.data(method, path, **kw)
        status = self.wait_task(upid, timeout)
        if status.get("exitstatus") != "OK":
            node = upid.split(":")[1]
            log = self.data("GET", f"/nodes/{node}/tasks/{upid}/log", params={"limit": 0})
            raise AssertionError(
                f"task failed: {status.get('exitstatus')}\n" + "\n".join(line["t"] for line in log)
            )
        return status
