"""User groups, authentication realms (domains) and resource pools, as Proxmox has them.

- A group is `access/groups/{groupid}` (its comment); membership is kept on
  the users (`groups` in their records), so a user's privileges come from one
  read. A group's `members` are found from the users.
- Realms (`pam`, `pve` and LDAP directories) are in `cluster/realms.py`.
- A pool is `access/pools/{poolid}`: a comment and its member guests (`vms`)
  and storages. A guest belongs to one pool at most, as in Proxmox. ACLs on
  `/pool/{poolid}` are resolved by the ACL code like any path.
"""

from __future__ import annotations

import re
from typing import Any

from corral.cluster import keys
from corral.cluster.errors import Conflict, NotFound, ParamError
from corral.cluster.store_api import StoreAPI

GROUP_ID = re.compile(r"^[A-Za-z0-9\.\-_]{1,64}$")
POOL_ID = re.compile(r"^[A-Za-z0-9\.\-_]{1,64}$")


# -- groups ---------------------------------------------------------------------------


def _group_key(groupid: str) -> str:
    return f"access/groups/{groupid}"


def check_group_id(groupid: str) -> None:
    if not GROUP_ID.match(groupid):
        raise ParamError.one("groupid", "invalid format: letters, digits, '.', '-', '_'")


def groups(store: StoreAPI) -> list[dict[str, Any]]:
    users = [kv.value for kv in store.range("access/users/")]
    out = []
    for kv in store.range("access/groups/"):
        members = sorted(u["userid"] for u in users if kv.value["groupid"] in u.get("groups", []))
        out.append({**kv.value, "users": ",".join(members)})
    return sorted(out, key=lambda g: g["groupid"])


def group(store: StoreAPI, groupid: str) -> dict[str, Any]:
    rec = store.get_value(_group_key(groupid))
    if rec is None:
        raise NotFound(f"group '{groupid}' does not exist")
    members = sorted(
        kv.value["userid"]
        for kv in store.range("access/users/")
        if groupid in kv.value.get("groups", [])
    )
    return {"comment": rec.get("comment", ""), "members": members}


def create_group(store: StoreAPI, groupid: str, comment: str = "") -> None:
    check_group_id(groupid)
    if not store.create(_group_key(groupid), {"groupid": groupid, "comment": comment}):
        raise Conflict(f"group '{groupid}' already exists")


def update_group(store: StoreAPI, groupid: str, comment: str) -> None:
    def change(rec: Any) -> Any:
        if rec is None:
            raise NotFound(f"group '{groupid}' does not exist")
        return {**rec, "comment": comment}

    store.update(_group_key(groupid), change)


def delete_group(store: StoreAPI, groupid: str) -> None:
    """The group, its memberships and its ACL entries go together."""
    if not store.delete(_group_key(groupid)):
        raise NotFound(f"group '{groupid}' does not exist")
    for kv in store.range("access/users/"):
        if groupid in kv.value.get("groups", []):

            def leave(rec: Any) -> Any:
                if rec is not None:
                    rec["groups"] = [g for g in rec.get("groups", []) if g != groupid]
                return rec

            store.update(kv.key, leave)
    store.update(
        "access/acl",
        lambda entries: [
            e for e in entries or [] if not (e["type"] == "group" and e["ugid"] == groupid)
        ],
    )


# -- pools ----------------------------------------------------------------------------


def _pool_key(poolid: str) -> str:
    return f"access/pools/{poolid}"


def pools(store: StoreAPI) -> list[dict[str, Any]]:
    return sorted(
        ({"poolid": kv.value["poolid"], "comment": kv.value.get("comment", "")}
         for kv in store.range("access/pools/")),
        key=lambda p: p["poolid"],
    )  # fmt: skip


def pool(store: StoreAPI, poolid: str) -> dict[str, Any]:
    rec = store.get_value(_pool_key(poolid))
    if rec is None:
        raise NotFound(f"pool '{poolid}' does not exist")
    return rec  # type: ignore[no-any-return]


def create_pool(store: StoreAPI, poolid: str, comment: str = "") -> None:
    if not POOL_ID.match(poolid):
        raise ParamError.one("poolid", "invalid format: letters, digits, '.', '-', '_'")
    rec = {"poolid": poolid, "comment": comment, "vms": [], "storage": []}
    if not store.create(_pool_key(poolid), rec):
        raise Conflict(f"pool '{poolid}' already exists")


def update_pool(
    store: StoreAPI,
    poolid: str,
    *,
    comment: str | None = None,
    vms: list[int] | None = None,
    storage: list[str] | None = None,
    delete: bool = False,
    allow_move: bool = False,
) -> None:
    """Add (or with `delete` remove) members; a guest in another pool is refused
    unless `allow_move`, which takes it out of the other pool."""
    vms = vms or []
    storage = storage or []
    if not delete:
        for vmid in vms:
            if store.get(keys.guest(vmid)) is None:
                raise ParamError.one("vms", f"guest {vmid} does not exist")
        for sid in storage:
            if store.get(keys.storage(sid)) is None:
                raise ParamError.one("storage", f"storage '{sid}' does not exist")
        for kv in store.range("access/pools/"):
            if kv.value["poolid"] == poolid:
                continue
            taken = sorted(set(vms) & set(kv.value.get("vms", [])))
            if taken and not allow_move:
                raise ParamError.one(
                    "vms", f"guest {taken[0]} is already a member of pool '{kv.value['poolid']}'"
                )
            if taken:

                def leave(rec: Any, taken: list[int] = taken) -> Any:
                    if rec is not None:
                        rec["vms"] = [v for v in rec.get("vms", []) if v not in taken]
                    return rec

                store.update(kv.key, leave)

    def change(rec: Any) -> Any:
        if rec is None:
            raise NotFound(f"pool '{poolid}' does not exist")
        if comment is not None:
            rec["comment"] = comment
        if delete:
            rec["vms"] = [v for v in rec.get("vms", []) if v not in vms]
            rec["storage"] = [s for s in rec.get("storage", []) if s not in storage]
        else:
            rec["vms"] = sorted(set(rec.get("vms", [])) | set(vms))
            rec["storage"] = sorted(set(rec.get("storage", [])) | set(storage))
        return rec

    store.update(_pool_key(poolid), change)


def delete_pool(store: StoreAPI, poolid: str) -> None:
    rec = pool(store, poolid)
    if rec.get("vms") or rec.get("storage"):
        raise Conflict(f"pool '{poolid}' is not empty")
    store.delete(_pool_key(poolid))
    store.update(
        "access/acl",
        lambda entries: [e for e in entries or [] if e["path"].rstrip("/") != f"/pool/{poolid}"],
    )


def pool_of(store: StoreAPI, vmid: int) -> str | None:
    for kv in store.range("access/pools/"):
        if vmid in kv.value.get("vms", []):
            return kv.value["poolid"]  # type: ignore[no-any-return]
    return None
