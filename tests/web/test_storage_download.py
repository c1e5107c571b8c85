"""`download-url` against a real corrald, from an HTTP server on loopback that the test
runs: the file lands in the storage byte for byte as a task with progress; a wrong
checksum, a 404 or a server that stops mid-way leave nothing; bad input is a 400
naming the parameter. proxmoxer makes the call as a Proxmox script would."""

from __future__ import annotations

import hashlib
import http.server
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI

from tests.loopback_http import serve
from tests.util import Corrald

pytestmark = pytest.mark.timeout(180)
BODY = os.urandom(3 << 20)
SLOW_CHUNKS = 8  # /slow.iso: BODY in 8 pieces, 0.4 s apart (progress can be watched)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path not in ("/tiny.iso", "/slow.iso", "/cut.iso", "/moved.iso"):
            self.send_error(404)
            return
        if self.path == "/moved.iso":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/x.iso")  # urllib would follow it
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.path == "/cut.iso":
            self.wfile.write(BODY[: len(BODY) // 2])  # then the connection closes
            return
        step = len(BODY) // SLOW_CHUNKS if self.path == "/slow.iso" else len(BODY)
        for i in range(0, len(BODY), step):
            self.wfile.write(BODY[i : i + step])
            self.wfile.flush()
            if self.path == "/slow.iso":
                time.sleep(0.4)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(Handler) as url:
        yield url


def iso_dir(node: Corrald) -> Path:
    return node.data_dir / "local" / "template" / "iso"


def leftovers(node: Corrald) -> list[str]:
    return [p.name for p in (node.data_dir / "local" / "template").iterdir() if p.is_file()]


def test_a_file_is_downloaded_as_a_task_with_progress(corrald: Corrald, server: str) -> None:
    prox = ProxmoxAPI("127.0.0.1", port=corrald.port, user="admin@pve",
                      password=corrald.password, verify_ssl=False)  # fmt: skip
    api = corrald.session()
    upid = prox.nodes("node1").storage("local")("download-url").post(
        url=f"{server}/slow.iso", filename="slow.iso", content="iso",
        checksum=hashlib.sha256(BODY).hexdigest(), **{"checksum-algorithm": "sha256"},
    )  # fmt: skip
    assert ":download:local:admin@pve:" in upid
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = api.data("GET", f"/nodes/node1/tasks/{upid}/status")
        if "progress" in st:
            seen.append(st["progress"])
        if st["status"] == "stopped":
            break
        time.sleep(0.2)
    assert st["exitstatus"] == "OK", st
    assert any(0 < p < 1 for p in seen), seen  # progress moved while it ran
    assert (iso_dir(corrald) / "slow.iso").read_bytes() == BODY
    volids = [v["volid"] for v in api.data("GET", "/nodes/node1/storage/local/content")]
    assert "local:iso/slow.iso" in volids
    log = "\n".join(r["t"] for r in api.data("GET", f"/nodes/node1/tasks/{upid}/log"))
    assert "sha256 checksum verified" in log and f"downloaded {len(BODY)} bytes" in log
    # The same name again: 409 at once, the file untouched.
    r = api.post(
        "/nodes/node1/storage/local/download-url",
        data={"url": f"{server}/tiny.iso", "filename": "slow.iso", "content": "iso"},
    )
    assert r.status_code == 409, r.text
    api.run_task("DELETE", "/nodes/node1/storage/local/content/local:iso/slow.iso")


@pytest.mark.parametrize(
    ("path", "extra", "error"),
    [
        ("/tiny.iso", {"checksum": "0" * 64, "checksum-algorithm": "sha256"}, "checksum mismatch"),
        ("/missing.iso", {}, "HTTP 404"),
        ("/cut.iso", {}, "incomplete"),
        ("/moved.iso", {}, "refused a redirect"),
    ],
)
def test_a_failed_download_leaves_nothing(
    corrald: Corrald, server: str, path: str, extra: dict[str, str], error: str
) -> None:
    api = corrald.session()
    r = api.post(
        "/nodes/node1/storage/local/download-url",
        data={"url": server + path, "filename": "failed.iso", "content": "iso", **extra},
    )
    assert r.status_code == 200, r.text
    st = api.wait_task(r.json()["data"], timeout=60)
    assert error in st["exitstatus"], st
    assert not (iso_dir(corrald) / "failed.iso").exists()
    assert not [n for n in leftovers(corrald) if n.startswith(".download")]


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"url": "ftp://127.0.0.1/x.iso"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "http:///nohost.iso"}, "url"),
        ({"filename": "../escape.iso"}, "filename"),
        ({"filename": "a/b.iso"}, "filename"),
        ({"filename": ".hidden.iso"}, "filename"),
        ({"filename": "notes.txt"}, "filename"),
        ({"content": "images"}, "content"),
        ({"content": "import"}, "content"),
        ({"checksum": "abc"}, "checksum-algorithm"),
        ({"checksum-algorithm": "crc32", "checksum": "abc"}, "checksum-algorithm"),
        ({"compression": "gz"}, "compression"),
    ],
)
def test_bad_requests_are_refused_naming_the_parameter(
    corrald: Corrald, data: dict[str, str], param: str
) -> None:
    api = corrald.session()
    body = {"url": "http://127.0.0.1:9/x.iso", "filename": "x.iso", "content": "iso", **data}
    r = api.post("/nodes/node1/storage/local/download-url", data=body)
    assert r.status_code == 400 and param in r.json().get("errors", {}), (data, r.text)
    assert not (iso_dir(corrald) / "x.iso").exists()


def test_a_user_without_network_access_is_refused(corrald: Corrald) -> None:
    api = corrald.session()
    api.post("/access/users", data={"userid": "dl@pve", "password": "long enough pw"})
    api.put(
        "/access/acl",
        data={"path": "/storage/local", "users": "dl@pve", "roles": "PVEDatastoreAdmin"},
    )
    user = corrald.session("dl@pve", "long enough pw")
    r = user.post(
        "/nodes/node1/storage/local/download-url",
        data={"url": "http://127.0.0.1:9/x.iso", "filename": "x.iso", "content": "iso"},
    )
    assert r.status_code == 403, r.text
