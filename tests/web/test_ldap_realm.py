"""LDAP realms against a real OpenLDAP slapd and a real corrald: realm settings checked
(400 naming the parameter), users and groups synced, logins checked by a bind (plain,
STARTTLS, LDAPS, with and without certificate checks), a directory that is down or hangs
answered with a clear error in bounded time, and the console's login page offering the
realm (headless Chromium)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI, ResourceException

from corral.cluster.ldap_client import TIMEOUT
from tests import ldap_server
from tests.ldap_server import SERVICE_DN, SERVICE_PW, SUFFIX, Person, Slapd
from tests.util import ApiSession, Corrald

pytestmark = [
    pytest.mark.skipif(ldap_server.available() is not None, reason=str(ldap_server.available())),
    pytest.mark.timeout(300),
]
ALICE = Person("alice", "alice's long secret", "Alice", "Liddell", "alice@corral.test")
BOB = Person("bob", "bob's long secret", "Bob", "Builder")


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(Path(tmp_path_factory.mktemp("slapd")))
    server.start([ALICE, BOB], {"admins": ["alice"], "builders": ["alice", "bob"]})
    try:
        yield server
    finally:
        server.stop()


def prox(node: Corrald, user: str, password: str) -> ProxmoxAPI:
    return ProxmoxAPI("127.0.0.1", port=node.port, user=user, password=password,
                      verify_ssl=node.ca, timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def admin(corrald: Corrald) -> ProxmoxAPI:
    return prox(corrald, "admin@pve", corrald.password)


def realm_settings(slapd: Slapd, **over: Any) -> dict[str, Any]:
    return {"type": "ldap", "server1": "127.0.0.1", "port": slapd.port, "base_dn": SUFFIX,
            "user_attr": "uid", "bind_dn": SERVICE_DN, "password": SERVICE_PW,
            "comment": "the test directory", **over}  # fmt: skip


def login(node: Corrald, user: str, password: str, **extra: str) -> Any:
    data = {"username": user, "password": password, **extra}
    return node.anonymous().post("/access/ticket", data=data)


def run_sync(api: ApiSession, realm: str, **params: Any) -> list[str]:
    r = api.post(f"/access/domains/{realm}/sync", data=params)
    assert r.status_code == 200, r.text
    upid = r.json()["data"]
    assert ":auth-realm-sync:" in upid
    status = api.wait_task(upid)
    node = upid.split(":")[1]
    log = [x["t"] for x in api.data("GET", f"/nodes/{node}/tasks/{upid}/log", params={"limit": 0})]
    assert status["exitstatus"] == "OK", (status, log)
    return log


def test_bad_realm_settings_are_400_naming_the_parameter(
    corrald: Corrald, slapd: Slapd, admin: ProxmoxAPI
) -> None:
    api = corrald.session()
    good = realm_settings(slapd)
    cases = [
        ({"server1": None}, "server1"),
        ({"base_dn": "not a dn"}, "base_dn"),
        ({"bind_dn": "cn=x,,"}, "bind_dn"),
        ({"mode": "ldapx"}, "mode"),
        ({"port": 70000}, "port"),
        ({"server1": "bad host!"}, "server1"),
        ({"user_attr": "u id"}, "user_attr"),
        ({"filter": "(uid=x"}, "filter"),
        ({"sync_attributes": "phone=mobile"}, "sync_attributes"),
        ({"sync-defaults-options": "scope=all"}, "sync-defaults-options"),
        ({"case-sensitive": 0}, "case-sensitive"),
        ({"capath": "relative/ca.pem"}, "capath"),
        ({"type": "ad"}, "type"),
        ({"type": "pve"}, "type"),
        ({"password": "wrong", "check-connection": 1}, "check-connection"),
        ({"port": 1, "check-connection": 1}, "check-connection"),
    ]
    for change, param in cases:
        data = {k: v for k, v in {**good, **change}.items() if v is not None}
        r = api.post("/access/domains", data={"realm": "broken", **data})
        assert r.status_code == 400, (change, r.status_code, r.text)
        assert param in r.json()["errors"], (change, r.json())
    assert "broken" not in {d["realm"] for d in admin.access.domains.get()}  # nothing kept
    r = api.post("/access/domains", data={"realm": "1bad", **good})
    assert r.status_code == 400 and "realm" in r.json()["errors"]
    # A change that breaks a good realm is refused, and the realm stays as it was.
    admin.access.domains.post(realm="keep", **good)
    r = api.put("/access/domains/keep", data={"base_dn": "nope"})
    assert r.status_code == 400 and "base_dn" in r.json()["errors"]
    r = api.put("/access/domains/keep", data={"delete": "server1"})
    assert r.status_code == 400 and "delete" in r.json()["errors"]
    assert admin.access.domains("keep").get()["base_dn"] == SUFFIX
    r = api.post("/access/domains/pve/sync", data={"scope": "users"})
    assert r.status_code == 400 and "realm" in r.json()["errors"]
    r = api.post("/access/domains/keep/sync", data={})  # no scope, no default for it
    assert r.status_code == 400 and "scope" in r.json()["errors"]
    r = api.post("/access/domains/keep/sync", data={"scope": "users", "remove-vanished": "all"})
    assert r.status_code == 400 and "remove-vanished" in r.json()["errors"]
    admin.access.domains("keep").delete()


def test_sync_then_log_in_by_bind_and_groups_grant(
    corrald: Corrald, slapd: Slapd, admin: ProxmoxAPI
) -> None:
    api = corrald.session()
    admin.access.domains.post(realm="corp", **realm_settings(slapd), **{"check-connection": 1})
    listed = {d["realm"]: d for d in corrald.anonymous().get("/access/domains").json()["data"]}
    assert listed["corp"]["type"] == "ldap" and listed["corp"]["comment"] == "the test directory"
    got = admin.access.domains("corp").get()
    assert got["server1"] == "127.0.0.1" and got["bind_dn"] == SERVICE_DN
    assert "password" not in got and SERVICE_PW not in str(got)
    # Not a corral user yet: the directory's password alone does not let alice in.
    assert login(corrald, "alice@corp", ALICE.password).status_code == 401

    dry = run_sync(api, "corp", scope="both", **{"dry-run": 1})
    assert any("(dry run) adding user alice@corp" in line for line in dry)
    assert "alice@corp" not in {u["userid"] for u in admin.access.users.get()}
    log = run_sync(api, "corp", scope="both")
    assert "adding user alice@corp" in log and "adding group admins-corp" in log
    alice = admin.access.users("alice@corp").get()
    assert alice["email"] == "alice@corral.test" and alice["firstname"] == "Alice"
    assert alice["lastname"] == "Liddell" and alice["enable"] == 1
    assert sorted(alice["groups"]) == ["admins-corp", "builders-corp"]
    assert admin.access.groups("builders-corp").get()["members"] == ["alice@corp", "bob@corp"]

    # The password is checked by a bind as alice's entry.
    assert login(corrald, "alice@corp", "wrong").status_code == 401
    assert login(corrald, "alice@corp", "").status_code in (400, 401)  # never an anonymous bind
    assert login(corrald, "alice", ALICE.password, realm="corp").status_code == 200
    alice_api = prox(corrald, "alice@corp", ALICE.password)
    with pytest.raises(ResourceException) as err:
        alice_api.access.acl.get()
    assert err.value.status_code == 403
    admin.access.acl.put(path="/", roles="PVEAuditor", groups="admins-corp")
    assert any(e["ugid"] == "admins-corp" for e in alice_api.access.acl.get())
    assert login(corrald, "bob@corp", BOB.password).status_code == 200
    # A disabled user stays out, whatever the directory says.
    admin.access.users("bob@corp").put(enable=0)
    assert login(corrald, "bob@corp", BOB.password).status_code == 401
    admin.access.users("bob@corp").put(enable=1)

    # The directory changes: bob leaves, alice's mail goes, alice leaves a group.
    import ldap3

    conn: Any = slapd.admin()
    conn.delete(BOB.dn)
    conn.modify(ALICE.dn, {"mail": [(ldap3.MODIFY_DELETE, [])]})
    admins = f"cn=admins,ou=groups,{SUFFIX}"
    conn.modify(admins, {"member": [(ldap3.MODIFY_REPLACE, [SERVICE_DN])]})
    conn.unbind()
    log = run_sync(api, "corp", scope="both")  # remove-vanished defaults to none: bob stays
    assert any("bob@corp is no longer in the directory" in line for line in log)
    assert "bob@corp" in {u["userid"] for u in admin.access.users.get()}
    assert admin.access.users("alice@corp").get()["groups"] == ["builders-corp"]
    assert login(corrald, "bob@corp", BOB.password).status_code == 401  # no entry to bind
    run_sync(api, "corp", scope="users", **{"remove-vanished": "entry;properties;acl"})
    assert "bob@corp" not in {u["userid"] for u in admin.access.users.get()}
    assert "email" not in admin.access.users("alice@corp").get()
    # Defaults from the realm: sync-defaults-options give the scope and what to remove.
    defaults = "scope=groups,remove-vanished=entry"
    admin.access.domains("corp").put(**{"sync-defaults-options": defaults})
    conn = slapd.admin()
    conn.delete(admins)
    conn.unbind()
    run_sync(api, "corp")
    assert "admins-corp" not in {g["groupid"] for g in admin.access.groups.get()}
    assert not any(e["ugid"] == "admins-corp" for e in admin.access.acl.get())


@pytest.mark.parametrize(
    "mode, tls, verify, works",
    [
        ("ldap+starttls", False, 0, True),
        ("ldaps", True, 0, True),
        ("ldaps", True, 1, False),  # self-signed, not in the system's CAs
        ("ldaps", True, "ca", True),  # the certificate given as capath
    ],
)
def test_modes_and_certificate_checks(
    corrald: Corrald, slapd: Slapd, admin: ProxmoxAPI, mode: str, tls: bool, verify: Any,
    works: bool,
) -> None:  # fmt: skip
    name = f"tls{int(tls)}{verify}{mode.replace('+', '')}"
    settings = realm_settings(slapd, mode=mode, port=slapd.tls_port if tls else slapd.port,
                              verify=1 if verify else 0)  # fmt: skip
    if verify == "ca":
        settings["capath"] = slapd.cert
    admin.access.domains.post(realm=name, **settings)
    try:
        admin.access.users.post(userid=f"alice@{name}")
        r = login(corrald, f"alice@{name}", ALICE.password)
        if works:
            assert r.status_code == 200, r.text
            assert login(corrald, f"alice@{name}", "wrong").status_code == 401
        else:
            assert r.status_code == 503, r.text
            assert name in r.json()["message"] and "certificate" in r.json()["message"].lower()
    finally:
        admin.access.domains(name).delete()


def test_server2_answers_when_server1_does_not(
    corrald: Corrald, slapd: Slapd, admin: ProxmoxAPI
) -> None:
    # slapd listens on 127.0.0.1 only: 127.0.0.2 (loopback too) refuses the connection.
    admin.access.domains.post(realm="twoserv", **realm_settings(slapd, server1="127.0.0.2",
                                                                server2="127.0.0.1"))  # fmt: skip
    try:
        admin.access.users.post(userid="alice@twoserv")
        assert login(corrald, "alice@twoserv", ALICE.password).status_code == 200
        assert login(corrald, "alice@twoserv", "wrong").status_code == 401
    finally:
        admin.access.domains("twoserv").delete()


def test_a_directory_down_or_hanging_is_a_clear_error_in_bounded_time(
    corrald: Corrald, slapd: Slapd, admin: ProxmoxAPI
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)  # accepts connections (the kernel does), never answers
    try:
        for realm, port in (("down", closed_port), ("hangs", hanging.getsockname()[1])):
            admin.access.domains.post(realm=realm, **realm_settings(slapd, port=port))
            admin.access.users.post(userid=f"alice@{realm}")
            started = time.monotonic()
            r = login(corrald, f"alice@{realm}", ALICE.password)
            took = time.monotonic() - started
            assert r.status_code == 503, r.text
            message = r.json()["message"]
            assert f"realm '{realm}'" in message and "unreachable" in message, message
            assert f"127.0.0.1:{port}" in message
            assert took < 3 * TIMEOUT + 5, took  # bounded by the LDAP timeouts, not hung
            # A sync is a task that fails with the same reason; nothing changes.
            upid = corrald.session().post(f"/access/domains/{realm}/sync",
                                          data={"scope": "both"}).json()["data"]  # fmt: skip
            assert "unreachable" in corrald.session().wait_task(upid)["exitstatus"]
            admin.access.domains(realm).delete()
    finally:
        hanging.close()


def test_the_login_page_offers_the_realm(
    corrald: Corrald, slapd: Slapd, admin: ProxmoxAPI, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.browser import CHROMIUM, chromium, screenshot_dir

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    admin.access.domains.post(realm="web", **realm_settings(slapd), default=1)
    admin.access.users.post(userid="alice@web")
    shots = screenshot_dir(tmp_path_factory)
    try:
        with chromium() as browser:
            ctx = browser.new_context(ignore_https_errors=True)
            page = ctx.new_page()
            page.goto(corrald.url + "/")
            page.wait_for_selector("#login select[name=realm] option[value=web]", state="attached")
            assert page.input_value("#login select[name=realm]") == "web"  # the default realm
            page.fill("input[name=username]", "alice")
            page.fill("input[name=password]", ALICE.password)
            page.screenshot(path=str(shots / "25-login-realm.png"))
            page.click("button[type=submit]")
            page.wait_for_selector("#app:not([hidden])")
            assert page.inner_text("#who") == "alice@web"
            # An administrator syncs the realm from Permissions → Realms (a task).
            page.click("#logout")
            page.fill("input[name=username]", "admin@pve")
            page.fill("input[name=password]", corrald.password)
            page.click("button[type=submit]")
            page.wait_for_selector("#app:not([hidden])")
            page.goto(corrald.url + "/#/access/realms")
            row = page.wait_for_selector("#realms tr[data-realm=web]")
            assert f"ldap://127.0.0.1:{slapd.port}" in row.inner_text()
            page.click("button[aria-label='Sync web']")
            page.wait_for_selector("#tasklog-title[data-state='OK']:has-text('Sync realm web')")
            page.screenshot(path=str(shots / "26-realms-synced.png"))
            assert "builders-web" in admin.access.users("alice@web").get()["groups"]
            ctx.close()
    finally:
        admin.access.domains("web").delete()
