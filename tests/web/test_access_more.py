"""Groups, domains, pools, user and ACL removal, token listing and TOTP logins,
against a real corrald, through proxmoxer and raw HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.core import AuthenticationError

from corral.cluster import keys, totp
from corral.cluster.store import Store
from tests.util import ApiSession, Corrald

PASSWORD = "correct horse battery"


def prox(node: Corrald, user: str, password: str, **kw: Any) -> ProxmoxAPI:
    return ProxmoxAPI("127.0.0.1", port=node.port, user=user, password=password,
                      verify_ssl=node.ca, timeout=30, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def admin(corrald: Corrald) -> ProxmoxAPI:
    return prox(corrald, "admin@pve", corrald.password)


def test_totp_matches_rfc6238_vectors() -> None:
    # RFC 6238 appendix B: the ASCII secret "12345678901234567890", SHA1, 8 digits.
    import base64

    entry = {"secret": base64.b32encode(b"12345678901234567890").decode(), "digits": 8,
             "period": 30, "algorithm": "SHA1"}  # fmt: skip
    for t, want in ((59, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"),
                    (2000000000, "69279037")):  # fmt: skip
        assert totp.code(entry, totp.current_step(entry, t)) == want
    assert totp.match(entry, "94287082", now=59 + 30) == 1  # one step of drift
    assert totp.match(entry, "94287082", now=59 + 90) is None


def test_groups_grant_through_acls_and_go_away_cleanly(corrald: Corrald, admin: ProxmoxAPI) -> None:
    admin.access.groups.post(groupid="ops", comment="operators")
    with pytest.raises(ResourceException) as err:
        admin.access.groups.post(groupid="ops")
    assert err.value.status_code == 409
    with pytest.raises(ResourceException) as err:
        admin.access.groups.post(groupid="bad/id")
    assert err.value.status_code == 400 and "groupid" in str(err.value)
    admin.access.users.post(userid="carol@pve", password=PASSWORD)
    with pytest.raises(ResourceException) as err:
        admin.access.users("carol@pve").put(groups="nosuch")
    assert err.value.status_code == 400 and "groups" in str(err.value)
    admin.access.users("carol@pve").put(groups="ops", email="carol@example.org")
    assert admin.access.groups("ops").get() == {"comment": "operators", "members": ["carol@pve"]}
    assert admin.access.users("carol@pve").get()["email"] == "carol@example.org"
    assert any(g["groupid"] == "ops" and g["users"] == "carol@pve"
               for g in admin.access.groups.get())  # fmt: skip

    carol = prox(corrald, "carol@pve", PASSWORD)
    with pytest.raises(ResourceException) as err:
        carol.access.acl.get()
    assert err.value.status_code == 403
    admin.access.acl.put(path="/", roles="PVEAuditor", groups="ops")
    assert any(e["ugid"] == "ops" and e["type"] == "group" for e in carol.access.acl.get())
    # Removing the ACL entry takes the privilege away again.
    admin.access.acl.put(path="/", roles="PVEAuditor", groups="ops", delete=1)
    with pytest.raises(ResourceException):
        carol.access.acl.get()
    admin.access.acl.put(path="/", roles="PVEAuditor", groups="ops")
    admin.access.groups("ops").delete()
    assert "ops" not in admin.access.users("carol@pve").get().get("groups", [])
    assert not any(e["ugid"] == "ops" for e in admin.access.acl.get())


def test_user_removal_takes_its_tokens_and_acls(corrald: Corrald, admin: ProxmoxAPI) -> None:
    admin.access.users.post(userid="dave@pve", password=PASSWORD)
    tok = admin.access.users("dave@pve").token("ci").post(privsep=0)
    assert [t["tokenid"] for t in admin.access.users("dave@pve").token.get()] == ["ci"]
    admin.access.acl.put(path="/vms", roles="PVEVMUser", users="dave@pve")
    admin.access.acl.put(path="/vms", roles="PVEVMUser", tokens="dave@pve!ci")
    api = ApiSession(corrald.url, corrald.ca).token(f"{tok['full-tokenid']}={tok['value']}")
    assert api.get("/version").status_code == 200
    admin.access.users("dave@pve").delete()
    assert not any(e["ugid"].startswith("dave@pve") for e in admin.access.acl.get())
    assert api.get("/version").status_code == 401
    with pytest.raises(ResourceException) as err:
        admin.access.users("dave@pve").delete()
    assert err.value.status_code == 404


def test_domains_are_listed_without_login(corrald: Corrald) -> None:
    r = corrald.anonymous().get("/access/domains")
    assert r.status_code == 200
    assert {d["realm"] for d in r.json()["data"]} == {"pam", "pve"}


def test_pools_hold_guests_and_storages(corrald: Corrald, admin: ProxmoxAPI) -> None:
    # A guest record as the guest service writes it: a pool only names guests, and
    # this test is about pools, not about creating containers.
    store = Store([f"http://127.0.0.1:{corrald.etcd_port}"])
    vmid = 4242
    store.put(keys.guest(vmid), {"vmid": vmid, "type": "lxc", "node": "node1",
                                 "config": {"hostname": "pooled"}})  # fmt: skip
    try:
        admin.pools.post(poolid="web", comment="front ends")
        admin.pools.post(poolid="db")
        admin.pools.put(poolid="web", vms=str(vmid), storage="local")
        rows = admin.pools.get(poolid="web")
        assert rows[0]["comment"] == "front ends"
        assert {m["id"] for m in rows[0]["members"]} == {f"lxc/{vmid}", "storage/local"}
        assert admin.pools("web").get()["members"][0]["name"] == "pooled"
        with pytest.raises(ResourceException) as err:
            admin.pools.put(poolid="db", vms=str(vmid))
        assert err.value.status_code == 400 and "already a member" in str(err.value)
        admin.pools.put(poolid="db", vms=str(vmid), **{"allow-move": 1})
        assert admin.pools.get(poolid="web")[0]["members"] == [
            {"id": "storage/local", "storage": "local", "type": "storage", "node": ""}
        ]
        with pytest.raises(ResourceException) as err:
            admin.pools.put(poolid="db", vms="4243")
        assert err.value.status_code == 400 and "4243" in str(err.value)
        with pytest.raises(ResourceException) as err:
            admin.pools.delete(poolid="db")
        assert err.value.status_code == 409
        # What is granted on /pool/db reaches its guests (and only them), as in Proxmox.
        admin.access.users.post(userid="hank@pve", password=PASSWORD)
        hank = prox(corrald, "hank@pve", PASSWORD)
        assert hank.cluster.resources.get(type="vm") == []
        admin.access.acl.put(path="/pool/db", roles="PVEVMUser", users="hank@pve")
        assert [r["vmid"] for r in hank.cluster.resources.get(type="vm")] == [vmid]
        hank_api = corrald.session("hank@pve", PASSWORD)
        assert hank_api.get(f"/nodes/node1/lxc/{vmid}/config").status_code == 200
        admin.pools.put(poolid="db", vms=str(vmid), delete=1)
        assert hank.cluster.resources.get(type="vm") == []
        assert hank_api.get(f"/nodes/node1/lxc/{vmid}/config").status_code == 403
        admin.pools.put(poolid="db", vms=str(vmid))
        admin.pools.put(poolid="db", vms=str(vmid), delete=1)
        admin.pools.delete(poolid="db")
        admin.pools("web").put(storage="local", delete=1)
        admin.pools("web").delete()
        assert admin.pools.get() == []
    finally:
        store.delete(keys.guest(vmid))
        store.close()


def test_totp_second_factor_with_proxmoxer(corrald: Corrald, admin: ProxmoxAPI) -> None:
    admin.access.users.post(userid="erin@pve", password=PASSWORD)
    erin = prox(corrald, "erin@pve", PASSWORD)
    new = erin.access.tfa("erin@pve")("new-totp").get()
    entry = totp.parse_uri(new["uri"])
    now_code = totp.code(entry, totp.current_step(entry))
    with pytest.raises(ResourceException) as err:  # without the current password
        erin.access.tfa("erin@pve").post(type="totp", totp=new["uri"], value=now_code)
    assert err.value.status_code == 400 and "password" in str(err.value)
    with pytest.raises(ResourceException) as err:
        erin.access.tfa("erin@pve").post(type="totp", totp=new["uri"], value="000000",
                                         password=PASSWORD)  # fmt: skip
    assert err.value.status_code == 400 and "value" in str(err.value)
    added = erin.access.tfa("erin@pve").post(type="totp", totp=new["uri"], value=now_code,
                                             password=PASSWORD, description="phone")  # fmt: skip
    listed = erin.access.tfa("erin@pve").get()
    assert listed == [{"id": added["id"], "type": "totp", "description": "phone",
                       "created": listed[0]["created"], "enable": 1}]  # fmt: skip

    # The password alone now yields a TFA challenge, not a ticket.
    anon = corrald.anonymous()
    r = anon.post("/access/ticket", data={"username": "erin@pve", "password": PASSWORD})
    first = r.json()["data"]
    assert first["NeedTFA"] == 1 and first["ticket"].startswith("PVE:!tfa!")
    anon.http.cookies.set("PVEAuthCookie", first["ticket"])
    assert anon.get("/version").status_code == 401  # the challenge is no ticket
    with pytest.raises(AuthenticationError):
        prox(corrald, "erin@pve", PASSWORD, otp="123456")
    # proxmoxer's two-step login with the next code (a used code is refused).
    time.sleep(max(0.0, 30 - time.time() % 30) + 0.5)
    step_code = totp.code(entry, totp.current_step(entry))
    erin2 = prox(corrald, "erin@pve", PASSWORD, otp=step_code)
    assert erin2.version.get()["release"]
    with pytest.raises(AuthenticationError):
        prox(corrald, "erin@pve", PASSWORD, otp=step_code)  # replayed
    erin.access.tfa("erin@pve")(added["id"]).delete()
    assert prox(corrald, "erin@pve", PASSWORD).version.get()
