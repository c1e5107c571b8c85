"""The API of a real corrald: authentication, CSRF, tokens, envelopes, core endpoints."""

from __future__ import annotations

import concurrent.futures
import os
import stat
from collections.abc import Iterator

import pytest
import requests
from proxmoxer import ProxmoxAPI

from tests.util import ApiSession, Corrald


def test_initial_admin_password_is_private(corrald: Corrald) -> None:
    pw = corrald.data_dir / "initial-admin-password"
    assert stat.S_IMODE(os.stat(pw).st_mode) == 0o600
    assert len(corrald.password) >= 12


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/version"),
        ("GET", "/nodes"),
        ("GET", "/cluster/resources"),
        ("POST", "/cluster/nextid"),
        ("GET", "/no/such/path"),
        ("DELETE", "/nodes/node1"),
    ],
)
def test_everything_but_login_needs_credentials(corrald: Corrald, method: str, path: str) -> None:
    r = corrald.anonymous().request(method, path)
    assert r.status_code == 401
    assert r.json()["data"] is None


def test_login_and_ticket_shape(corrald: Corrald) -> None:
    s = corrald.session()
    assert s.ticket.startswith("PVE:admin@pve:")
    assert s.get("/version").json()["data"]["version"]
    bad = requests.post(
        f"{corrald.url}/api2/json/access/ticket",
        verify=corrald.ca,
        timeout=30,
        data={"username": "admin@pve", "password": "wrong"},
    )
    assert bad.status_code == 401
    realm = requests.post(
        f"{corrald.url}/api2/json/access/ticket",
        verify=corrald.ca,
        timeout=30,
        data={"username": "admin", "realm": "pve", "password": corrald.password},
    )
    assert realm.status_code == 200


def test_ticket_renewal_with_the_ticket_as_password(corrald: Corrald) -> None:
    s = corrald.session()
    renewed = requests.post(
        f"{corrald.url}/api2/json/access/ticket",
        verify=corrald.ca,
        timeout=30,
        data={"username": "admin@pve", "password": s.ticket},
    )
    assert renewed.status_code == 200


def test_write_with_cookie_needs_csrf(corrald: Corrald) -> None:
    s = corrald.session()
    refused = s.post("/cluster/nextid", csrf=False)
    assert refused.status_code == 401
    assert "csrf" in refused.json()["message"].lower()
    assert s.post("/cluster/nextid").status_code == 200


def test_token_works_without_csrf_and_revocation_is_immediate(corrald: Corrald) -> None:
    admin = corrald.session()
    tok = admin.data("POST", "/access/users/admin@pve/token/auto", data={"privsep": 0})
    assert tok["full-tokenid"] == "admin@pve!auto"
    t = ApiSession(corrald.url, corrald.ca).token(f"admin@pve!auto={tok['value']}")
    assert t.post("/cluster/nextid").status_code == 200
    listed = admin.data("GET", "/access/users/admin@pve/token")
    assert [x["tokenid"] for x in listed] == ["auto"] and "hash" not in str(listed)
    assert admin.delete("/access/users/admin@pve/token/auto").status_code == 200
    assert t.get("/version").status_code == 401


def test_privilege_separated_token_without_acl_is_forbidden(corrald: Corrald) -> None:
    admin = corrald.session()
    tok = admin.data("POST", "/access/users/admin@pve/token/sep")
    t = ApiSession(corrald.url, corrald.ca).token(f"admin@pve!sep={tok['value']}")
    assert t.get("/nodes/node1/status").status_code == 403
    admin.data(
        "PUT", "/access/acl", data={"path": "/", "roles": "PVEAuditor", "tokens": "admin@pve!sep"}
    )
    assert t.get("/nodes/node1/status").status_code == 200
    assert t.post("/cluster/nextid").status_code == 403


def test_bad_parameters_are_400_naming_each(corrald: Corrald) -> None:
    s = corrald.session()
    r = s.get("/cluster/nextid", params={"vmid": "abc"})
    assert r.status_code == 400
    assert "vmid" in r.json()["errors"]
    r = s.post("/access/users", data={"userid": "no-realm", "password": "short", "x": "1"})
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert set(errors) == {"userid", "x"}
    r = s.post("/access/users", data={"userid": "bob@pve", "password": "short"})
    assert r.status_code == 400 and "password" in r.json()["errors"]


def test_unimplemented_paths_are_501_like_proxmox(corrald: Corrald) -> None:
    r = corrald.session().get("/cluster/sdn/vnets")
    assert r.status_code == 501
    assert r.json()["message"] == "Method 'GET /cluster/sdn/vnets' not implemented"


def test_garbage_never_gives_500(corrald: Corrald) -> None:
    s = corrald.session()
    for path, kwargs in [
        ("/access/users", {"data": b"\xff\xfe\x00garbage"}),
        ("/access/users", {"json": [1, 2, 3]}),
        ("/access/users", {"data": {"userid": "a" * 5000 + "@pve"}}),
        ("/cluster/nextid", {"data": {"vmid": "1" * 400}}),
    ]:
        r = s.post(path, **kwargs)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert "Traceback" not in r.text


def test_nodes_and_node_status(corrald: Corrald) -> None:
    s = corrald.session()
    nodes = s.data("GET", "/nodes")
    assert [(n["node"], n["status"]) for n in nodes] == [("node1", "online")]
    status = s.data("GET", "/nodes/node1/status")
    for key in ("cpu", "cpuinfo", "memory", "swap", "rootfs", "loadavg", "uptime", "kversion"):
        assert key in status, key
    assert status["cpuinfo"]["cpus"] == os.cpu_count()
    assert "hvm" in status["cpuinfo"]
    assert status["memory"]["total"] > 0
    assert s.get("/nodes/nosuch/status").status_code == 404


def test_cluster_status(corrald: Corrald) -> None:
    status = corrald.session().data("GET", "/cluster/status")
    cluster = status[0]
    assert cluster["type"] == "cluster" and cluster["quorate"] == 1 and cluster["nodes"] == 1
    assert status[1]["name"] == "node1" and status[1]["online"] == 1 and status[1]["local"] == 1


def test_nextid_and_atomic_reservation(corrald: Corrald) -> None:
    s = corrald.session()
    first = int(s.data("GET", "/cluster/nextid"))
    assert first >= 100

    def reserve(_: int) -> int:
        return int(s.data("POST", "/cluster/nextid"))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(reserve, range(16)))
    assert len(set(got)) == 16  # no two callers got the same id
    taken = got[0]
    # Still free for the one who holds it (tests/lxc/test_parallel_create.py: not for others).
    assert int(s.data("GET", "/cluster/nextid", params={"vmid": taken})) == taken
    assert s.post("/cluster/nextid", data={"vmid": taken}).status_code == 409


def test_resources_lists_the_node(corrald: Corrald) -> None:
    rows = corrald.session().data("GET", "/cluster/resources", params={"type": "node"})
    assert rows[0]["id"] == "node/node1" and rows[0]["status"] == "online"


def test_openapi_document(corrald: Corrald) -> None:
    r = requests.get(f"{corrald.url}/api2/openapi.json", verify=corrald.ca, timeout=30)
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    op = doc["paths"]["/api2/json/cluster/nextid"]["get"]
    assert op["parameters"][0]["name"] == "vmid"


def test_proxmoxer_unmodified(corrald: Corrald) -> None:
    host, port = "127.0.0.1", corrald.port
    api = ProxmoxAPI(
        host, port=port, user="admin@pve", password=corrald.password, verify_ssl=corrald.ca
    )
    assert api.version.get()["version"]
    assert api.nodes.get()[0]["node"] == "node1"
    tok = api.access.users("admin@pve").token("prox").post(privsep=0)
    via_token = ProxmoxAPI(
        host,
        port=port,
        user="admin@pve",
        token_name="prox",
        token_value=tok["value"],
        verify_ssl=corrald.ca,
    )
    assert via_token.nodes("node1").status.get()["uptime"] >= 0


def test_local_socket_is_root_only(corrald: Corrald) -> None:
    sock = corrald.data_dir / "corrald.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert corrald.local().call("GET", "/nodes")[0]["node"] == "node1"


@pytest.fixture
def pam_user() -> Iterator[tuple[str, str]]:
    """A throwaway host account with a password, removed afterwards."""
    import subprocess

    name, password = "crltestpam", "Pam-Test-Passw0rd"
    subprocess.run(["userdel", name], capture_output=True, timeout=30)
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        timeout=30,
    )
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, timeout=30)
    yield name, password
    subprocess.run(["userdel", name], capture_output=True, timeout=30)


def test_pam_realm_checks_the_host_password(corrald: Corrald, pam_user: tuple[str, str]) -> None:
    name, password = pam_user
    url = f"{corrald.url}/api2/json/access/ticket"
    # PAM accepts the password, but the user was not added to corral yet.
    r = requests.post(
        url, data={"username": f"{name}@pam", "password": password}, verify=corrald.ca, timeout=30
    )
    assert r.status_code == 401
    corrald.session().data("POST", "/access/users", data={"userid": f"{name}@pam"})
    r = requests.post(
        url, data={"username": f"{name}@pam", "password": password}, verify=corrald.ca, timeout=30
    )
    assert r.status_code == 200, r.text
    r = requests.post(
        url, data={"username": f"{name}@pam", "password": "wrong"}, verify=corrald.ca, timeout=30
    )
    assert r.status_code == 401


def test_every_change_is_audited_without_secrets(corrald: Corrald) -> None:
    s = corrald.session()
    s.post("/cluster/nextid")
    s.post("/access/users", data={"userid": "audited@pve", "password": "Secret-Pass-123"})

    def logged() -> bool:
        text = (corrald.data_dir / "test-corrald.log").read_text()
        return (
            "audit user=admin@pve method=POST path=/cluster/nextid status=200" in text
            and "path=/access/users status=200" in text
        )

    from tests.util import wait_for

    wait_for(logged, 10, what="audit lines")
    assert "Secret-Pass-123" not in (corrald.data_dir / "test-corrald.log").read_text()
