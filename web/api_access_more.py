"""Groups, authentication domains, resource pools and TOTP second factors
(/access/groups, /access/domains, /pools, /access/tfa), as Proxmox declares them."""

from __future__ import annotations

from typing import Any

from corral.cluster import access_groups as ag
from corral.cluster import access_tfa, keys, realms, totp
from corral.cluster.errors import Forbidden, NotFound, ParamError
from corral.cluster.schema import Param
from corral.web.api import Ctx, endpoint
from corral.web.api_access import USERID

GROUPID = Param("string", "The group ID.", max_length=64, pattern=r"[A-Za-z0-9\.\-_]+")
POOLID = Param("string", "The pool ID.", max_length=64, pattern=r"[A-Za-z0-9\.\-_]+")
COMMENT = Param("string", "", optional=True, max_length=2048)
REALM = Param("string", "Authentication domain ID", max_length=32)


# -- groups ---------------------------------------------------------------------------


@endpoint(
    "GET", "/access/groups", perm=("/access/groups", ["Sys.Audit"]), description="Group index."
)
def list_groups(ctx: Ctx) -> list[dict[str, Any]]:
    return ag.groups(ctx.store)


@endpoint(
    "POST",
    "/access/groups",
    params={"groupid": GROUPID, "comment": COMMENT},
    perm=("/access/groups", ["Group.Allocate"]),
    description="Create new group.",
)
def create_group(ctx: Ctx, groupid: str, comment: str | None = None) -> None:
    ag.create_group(ctx.store, groupid, comment or "")


@endpoint(
    "GET",
    "/access/groups/{groupid}",
    params={"groupid": GROUPID},
    perm=("/access/groups", ["Sys.Audit"]),
    description="Get group configuration.",
)
def get_group(ctx: Ctx, groupid: str) -> dict[str, Any]:
    return ag.group(ctx.store, groupid)


@endpoint(
    "PUT",
    "/access/groups/{groupid}",
    params={"groupid": GROUPID, "comment": COMMENT},
    perm=("/access/groups", ["Group.Allocate"]),
    description="Update group data.",
)
def update_group(ctx: Ctx, groupid: str, comment: str | None = None) -> None:
    ag.update_group(ctx.store, groupid, comment or "")


@endpoint(
    "DELETE",
    "/access/groups/{groupid}",
    params={"groupid": GROUPID},
    perm=("/access/groups", ["Group.Allocate"]),
    description="Delete group (its memberships and ACL entries with it).",
)
def delete_group(ctx: Ctx, groupid: str) -> None:
    ag.delete_group(ctx.store, groupid)


# -- domains --------------------------------------------------------------------------


@endpoint("GET", "/access/domains", public=True, description="Authentication domain index.")
def list_domains(ctx: Ctx) -> list[dict[str, Any]]:
    return realms.realms(ctx.store)


@endpoint(
    "GET",
    "/access/domains/{realm}",
    params={"realm": REALM},
    perm=("/access/domains", ["Sys.Audit"]),
    description="Get auth server configuration.",
)
def get_domain(ctx: Ctx, realm: str) -> dict[str, Any]:
    return realms.realm(ctx.store, realm)


# -- pools ----------------------------------------------------------------------------


def _members(ctx: Ctx, rec: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for vmid in rec.get("vms", []):
        guest = ctx.store.get_value(keys.guest(vmid))
        if guest is not None:
            out.append({"id": f"{guest['type']}/{vmid}", "vmid": vmid, "type": guest["type"],
                        "node": guest["node"], "name": guest["config"].get("name")
                        or guest["config"].get("hostname") or ""})  # fmt: skip
    for sid in rec.get("storage", []):
        out.append({"id": f"storage/{sid}", "storage": sid, "type": "storage", "node": ""})
    return out


@endpoint(
    "GET",
    "/pools",
    params={
        "poolid": Param("string", "", optional=True, max_length=64),
        "type": Param("string", "", optional=True, enum=("qemu", "lxc", "storage")),
    },
    description="List pools or get pool configuration.",
)
def list_pools(
    ctx: Ctx, poolid: str | None = None, type: str | None = None
) -> list[dict[str, Any]]:
    out = []
    for row in ag.pools(ctx.store):
        if poolid is not None and row["poolid"] != poolid:
            continue
        if not ctx.can(f"/pool/{row['poolid']}", ["Pool.Audit", "Pool.Allocate"], any_of=True):
            continue
        if poolid is not None:
            members = _members(ctx, ag.pool(ctx.store, row["poolid"]))
            row = {**row, "members": [m for m in members if type in (None, m["type"])]}
        out.append(row)
    if poolid is not None and not out:
        raise NotFound(f"pool '{poolid}' does not exist")
    return out


@endpoint(
    "POST",
    "/pools",
    params={"poolid": POOLID, "comment": COMMENT},
    perm=("/pool/{poolid}", ["Pool.Allocate"]),
    description="Create new pool.",
)
def create_pool(ctx: Ctx, poolid: str, comment: str | None = None) -> None:
    ag.create_pool(ctx.store, poolid, comment or "")


POOL_UPDATE = {
    "poolid": POOLID,
    "comment": COMMENT,
    "vms": Param("string", "List of guest VMIDs to add or remove.", optional=True, max_length=8192,
                 pattern=r"([1-9][0-9]{2,8}([,; ]+[1-9][0-9]{2,8})*)?"),
    "storage": Param("string", "List of storage IDs to add or remove.", optional=True,
                     max_length=8192),
    "delete": Param("boolean", "Remove the passed VMIDs and/or storage IDs.", optional=True),
    "allow-move": Param("boolean", "Allow moving a guest from another pool.", optional=True),
}  # fmt: skip


def _update_pool(ctx: Ctx, poolid: str, **params: Any) -> None:
    vms: list[int] = []
    for item in (params.get("vms") or "").replace(";", ",").split(","):
        if item.strip():
            if not item.strip().isdigit():
                raise ParamError.one("vms", f"'{item}' is not a VMID")
            vms.append(int(item))
    storage = [s for s in (params.get("storage") or "").replace(";", ",").split(",") if s.strip()]
    for vmid in vms:
        ctx.check(f"/vms/{vmid}", ["VM.Allocate"])
    for sid in storage:
        ctx.check(f"/storage/{sid}", ["Datastore.Allocate"])
    ag.update_pool(
        ctx.store,
        poolid,
        comment=params.get("comment"),
        vms=vms,
        storage=storage,
        delete=bool(params.get("delete")),
        allow_move=bool(params.get("allow-move")),
    )


@endpoint(
    "PUT",
    "/pools",
    params=dict(POOL_UPDATE),
    perm=("/pool/{poolid}", ["Pool.Allocate"]),
    description="Update pool.",
)
def update_pool(ctx: Ctx, poolid: str, **params: Any) -> None:
    _update_pool(ctx, poolid, **params)


@endpoint(
    "PUT",
    "/pools/{poolid}",
    params=dict(POOL_UPDATE),
    perm=("/pool/{poolid}", ["Pool.Allocate"]),
    description="Update pool data (deprecated path).",
)
def update_pool_path(ctx: Ctx, poolid: str, **params: Any) -> None:
    _update_pool(ctx, poolid, **params)


@endpoint(
    "GET",
    "/pools/{poolid}",
    params={"poolid": POOLID, "type": Param("string", "", optional=True,
                                            enum=("qemu", "lxc", "storage"))},
    perm=("/pool/{poolid}", ["Pool.Audit"]),
    description="Get pool configuration (deprecated path).",
)  # fmt: skip
def get_pool(ctx: Ctx, poolid: str, type: str | None = None) -> dict[str, Any]:
    rec = ag.pool(ctx.store, poolid)
    members = [m for m in _members(ctx, rec) if type in (None, m["type"])]
    return {"comment": rec.get("comment", ""), "members": members}


@endpoint(
    "DELETE",
    "/pools",
    params={"poolid": POOLID},
    perm=("/pool/{poolid}", ["Pool.Allocate"]),
    description="Delete pool (only an empty one).",
)
def delete_pool(ctx: Ctx, poolid: str) -> None:
    ag.delete_pool(ctx.store, poolid)


@endpoint(
    "DELETE",
    "/pools/{poolid}",
    params={"poolid": POOLID},
    perm=("/pool/{poolid}", ["Pool.Allocate"]),
    description="Delete pool (deprecated path).",
)
def delete_pool_path(ctx: Ctx, poolid: str) -> None:
    ag.delete_pool(ctx.store, poolid)


# -- TOTP second factor ---------------------------------------------------------------


def _own_or_admin(ctx: Ctx, userid: str) -> None:
    if ctx.identity.tokenid is not None:
        raise Forbidden("API tokens cannot manage second factors")
    if ctx.identity.userid != userid:
        ctx.check("/access/users", ["User.Modify"])


@endpoint("GET", "/access/tfa", perm=("/access/users", ["User.Modify"]),
          description="List TFA configurations of users.")  # fmt: skip
def list_tfa(ctx: Ctx) -> list[dict[str, Any]]:
    return access_tfa.all_entries(ctx.store)


@endpoint("GET", "/access/tfa/{userid}", params={"userid": USERID},
          description="List TFA configurations of a user.")  # fmt: skip
def user_tfa(ctx: Ctx, userid: str) -> list[dict[str, Any]]:
    _own_or_admin(ctx, userid)
    return access_tfa.entries(ctx.store, userid)


@endpoint(
    "POST",
    "/access/tfa/{userid}",
    params={
        "userid": USERID,
        "type": Param("string", "TFA Entry Type.", enum=("totp",)),
        "description": Param("string", "A description.", optional=True, max_length=255),
        "totp": Param("string", "A totp URI.", optional=True, max_length=1024),
        "value": Param("string", "The current value for the provided totp URI.", optional=True,
                       max_length=16),
        "password": Param("string", "The current password of the user performing the change.",
                          optional=True, secret=True, max_length=64),
    },
    description="Add a TFA entry for a user (TOTP: the URI and its current code).",
)  # fmt: skip
def add_tfa(
    ctx: Ctx,
    userid: str,
    type: str,
    totp: str | None = None,
    value: str | None = None,
    description: str | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    _own_or_admin(ctx, userid)
    if ctx.identity.userid == userid and ctx.identity.userid != "root@pam":
        # As Proxmox: a stolen session alone cannot add a second factor.
        if not password or not ctx.access.check_password(userid, password):
            raise ParamError.one("password", "the current password is required and must match")
    if not totp:
        raise ParamError.one("totp", "a totp URI is required")
    if not value:
        raise ParamError.one("value", "the current code of the TOTP app is required")
    return {"id": access_tfa.add_totp(ctx.store, userid, totp, value, description or "")}


@endpoint("DELETE", "/access/tfa/{userid}/{id}",
          params={"userid": USERID, "id": Param("string", "A TFA entry id.", max_length=64)},
          description="Delete a TFA entry by ID.")  # fmt: skip
def delete_tfa(ctx: Ctx, userid: str, id: str) -> None:
    _own_or_admin(ctx, userid)
    access_tfa.delete(ctx.store, userid, id)


# A fresh secret and its URI, for a client that has no generator of its own (the console).
@endpoint("GET", "/access/tfa/{userid}/new-totp", params={"userid": USERID},
          description="corral extension: a new random TOTP secret and its otpauth URI "
          "(nothing is stored until POST /access/tfa/{userid}).")  # fmt: skip
def new_totp(ctx: Ctx, userid: str) -> dict[str, Any]:
    _own_or_admin(ctx, userid)
    secret = totp.new_secret()
    return {"secret": secret, "uri": totp.uri(secret, userid)}
