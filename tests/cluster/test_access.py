"""Tickets, CSRF tokens, API tokens and ACL resolution against a real store."""

from __future__ import annotations

import time
from typing import Any

import pytest

from corral.cluster.access import TICKET_LIFETIME, Access, Identity
from corral.cluster.errors import Conflict, Forbidden, Unauthorized
from corral.cluster.store_api import StoreAPI


@pytest.fixture
def access(store: StoreAPI) -> Access:
    a = Access(store)
    a.create_user("alice@pve", password="correct horse")
    return a


def test_password_is_hashed_and_checked(access: Access, store: StoreAPI) -> None:
    rec = store.get_value("access/users/alice@pve")
    assert rec["password_hash"].startswith("$argon2")
    assert "correct horse" not in str(rec)
    assert access.check_password("alice@pve", "correct horse")
    assert not access.check_password("alice@pve", "wrong")
    assert not access.check_password("nobody@pve", "correct horse")
    with pytest.raises(Conflict):
        access.create_user("alice@pve", password="x" * 8)


def test_ticket_format_and_lifetime(access: Access) -> None:
    now = time.time()
    ticket, csrf = access.issue_ticket("alice@pve", now)
    assert ticket.startswith("PVE:alice@pve:") and "::" in ticket
    assert access.verify_ticket(ticket, now + 60) == "alice@pve"
    access.verify_csrf(csrf, "alice@pve", now + 60)
    with pytest.raises(Unauthorized, match="expired"):
        access.verify_ticket(ticket, now + TICKET_LIFETIME + 1)
    with pytest.raises(Unauthorized):
        access.verify_ticket(ticket.replace("alice", "admin"), now)
    with pytest.raises(Unauthorized):
        access.verify_csrf(csrf, "mallory@pve", now)
    with pytest.raises(Unauthorized):
        access.verify_csrf(None, "alice@pve", now)


def test_disabled_user_loses_tickets(access: Access, store: StoreAPI) -> None:
    ticket, _ = access.issue_ticket("alice@pve")
    store.update("access/users/alice@pve", lambda r: {**r, "enable": 0})
    with pytest.raises(Unauthorized, match="disabled"):
        access.verify_ticket(ticket)


def test_tokens_are_hashed_and_revocable(access: Access, store: StoreAPI) -> None:
    tok = access.create_token("alice@pve", "ci")
    assert tok["full-tokenid"] == "alice@pve!ci"
    assert tok["value"] not in str(store.get_value("access/users/alice@pve"))
    ident = access.verify_token(f"alice@pve!ci={tok['value']}")
    assert ident == Identity("alice@pve", "ci")
    with pytest.raises(Unauthorized):
        access.verify_token("alice@pve!ci=not-the-secret")
    with pytest.raises(Conflict):
        access.create_token("alice@pve", "ci")
    access.delete_token("alice@pve", "ci")
    with pytest.raises(Unauthorized):
        access.verify_token(f"alice@pve!ci={tok['value']}")


def test_acl_inheritance_and_specific_paths(access: Access) -> None:
    alice = Identity("alice@pve")
    access.add_acl("/", "alice@pve", "PVEAuditor")
    access.add_acl("/vms/105", "alice@pve", "PVEVMAdmin")
    access.add_acl("/storage", "alice@pve", "NoAccess", propagate=1)
    access.check(alice, "/nodes/n1", ["Sys.Audit"])
    access.check(alice, "/vms/105", ["VM.PowerMgmt"])
    with pytest.raises(Forbidden):
        access.check(alice, "/vms/106", ["VM.PowerMgmt"])
    assert access.privileges(alice, "/storage/local") == frozenset()  # more specific wins


def test_privilege_separated_token_gets_the_intersection(access: Access) -> None:
    access.add_acl("/", "alice@pve", "Administrator")
    sep = access.create_token("alice@pve", "sep", privsep=1)
    full = access.create_token("alice@pve", "full", privsep=0)
    del sep, full
    access.add_acl("/", "alice@pve!sep", "PVEAuditor", kind="token")
    assert "VM.Allocate" in access.privileges(Identity("alice@pve", "full"), "/vms/1")
    privs = access.privileges(Identity("alice@pve", "sep"), "/vms/1")
    assert "VM.Audit" in privs and "VM.Allocate" not in privs


def test_root_pam_is_superuser(access: Access) -> None:
    assert "Sys.Modify" in access.privileges(Identity("root@pam"), "/nodes/x")


def test_one_request_reads_the_callers_record_once(access: Access, store: StoreAPI) -> None:
    """Token check, "enabled?" and the privilege check share one read per request;
    the next request reads again (a user disabled meanwhile is refused)."""
    tok = access.create_token("alice@pve", "ci")
    access.add_acl("/vms", "alice@pve", "PVEVMUser")
    access.add_acl("/vms", "alice@pve!ci", "PVEVMUser", kind="token")
    reads: list[str] = []
    real_get = store.get

    def counting_get(key: str) -> Any:
        reads.append(key)
        return real_get(key)

    store.get = counting_get  # type: ignore[method-assign]
    try:
        with access.request_scope():
            ident = access.verify_token(f"alice@pve!ci={tok['value']}")
            access.check(ident, "/vms/100", ["VM.PowerMgmt"])
        assert reads.count("access/users/alice@pve") == 1
        store.update("access/users/alice@pve", lambda r: {**r, "enable": 0})
        with access.request_scope(), pytest.raises(Unauthorized, match="disabled"):
            access.verify_token(f"alice@pve!ci={tok['value']}")
        reads.clear()
        with pytest.raises(Unauthorized):  # outside a request: read each time, as before
            access.verify_token(f"alice@pve!ci={tok['value']}")
        assert reads.count("access/users/alice@pve") == 2
    finally:
        del store.get
