"""Login tickets, users and API tokens (/access/...)."""

from __future__ import annotations

import time
from typing import Any

from corral.cluster import access_tfa
from corral.cluster.access import ROLES, split_userid
from corral.cluster.errors import Forbidden, NotFound, ParamError, Unauthorized
from corral.cluster.schema import Param
from corral.web.api import Ctx, endpoint

USERID = Param(
    "string", "Full User ID, in the `name@realm` format.", format="pve-userid", max_length=64
)
TOKENID = Param("string", "User-specific token identifier.", format="pve-tokenid")
# Slows password guessing without making a legitimate typo painful.
FAILED_LOGIN_DELAY = 0.3


@endpoint(
    "POST",
    "/access/ticket",
    public=True,
    params={
        "username": Param("string", "User name", max_length=64),
        "password": Param(
            "string", "The secret password. This can also be a valid ticket.", secret=True
        ),
        "realm": Param(
            "string",
            "You can optionally pass the realm using this parameter.",
            optional=True,
            max_length=32,
        ),
        "otp": Param("string", "One-time password for Two-factor authentication.", optional=True),
        "path": Param(
            "string",
            "Verify ticket, and check if user have access 'privs' on 'path'",
            optional=True,
            max_length=64,
        ),
        "privs": Param(
            "string",
            "Verify ticket, and check if user have access 'privs' on 'path'",
            optional=True,
            max_length=64,
        ),
        "new-format": Param("boolean", "Ignored (always the new format).", optional=True),
        "tfa-challenge": Param(
            "string",
            "The signed TFA challenge string the user wants to respond to.",
            optional=True,
            max_length=512,
        ),
    },
    description="Create or verify authentication ticket.",
)
def login(
    ctx: Ctx,
    username: str,
    password: str,
    realm: str | None = None,
    otp: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    userid = username if "@" in username or realm is None else f"{username}@{realm}"
    if "@" not in userid:
        raise ParamError.one("username", "invalid format - missing realm")
    try:
        split_userid(userid)
    except ParamError:
        raise Unauthorized("authentication failure") from None
    challenge = params.get("tfa-challenge")
    if challenge:
        # Second step (Proxmox >= 7): the password field carries `totp:CODE`.
        if ctx.access.verify_tfa_challenge(challenge) != userid:
            raise Unauthorized("authentication failure")
        kind, _, code = password.partition(":")
        if kind != "totp" or not access_tfa.verify(ctx.store, userid, code):
            time.sleep(FAILED_LOGIN_DELAY)
            raise Unauthorized("authentication failure")
        return _ticket(ctx, userid)
    ok = False
    from_ticket = password.startswith("PVE:")
    if from_ticket:
        try:
            ok = ctx.access.verify_ticket(password) == userid
        except Unauthorized:
            ok = False
    else:
        ok = ctx.access.check_password(userid, password)
    if not ok:
        time.sleep(FAILED_LOGIN_DELAY)
        raise Unauthorized("authentication failure")
    if not from_ticket and access_tfa.required(ctx.store, userid):
        if otp:  # the one-call form (Proxmox 6, proxmoxer's otp=)
            if not access_tfa.verify(ctx.store, userid, otp):
                time.sleep(FAILED_LOGIN_DELAY)
                raise Unauthorized("authentication failure")
        else:
            return {
                "username": userid,
                "ticket": ctx.access.issue_tfa_challenge(userid),
                "CSRFPreventionToken": "",
                "NeedTFA": 1,
            }
    return _ticket(ctx, userid)


def _ticket(ctx: Ctx, userid: str) -> dict[str, Any]:
    ticket, csrf = ctx.access.issue_ticket(userid)
    cluster = ctx.store.get_value("cluster/config", {}) or {}
    return {
        "username": userid,
        "ticket": ticket,
        "CSRFPreventionToken": csrf,
        "clustername": cluster.get("name"),
        "cap": _caps(ctx, userid),
    }


def _caps(ctx: Ctx, userid: str) -> dict[str, dict[str, int]]:
    from corral.cluster.access import Identity

    privs = ctx.access.privileges(Identity(userid), "/")
    groups = {
        "vms": "VM.",
        "storage": "Datastore.",
        "nodes": "Sys.",
        "access": "User.",
        "dc": "Sys.",
    }
    return {
        g: {p: 1 for p in sorted(privs) if p.startswith(prefix)} for g, prefix in groups.items()
    }


def _own_or(ctx: Ctx, userid: str, priv: str) -> None:
    if ctx.identity.userid == userid and ctx.identity.tokenid is None:
        return
    ctx.check("/access/users", [priv])


@endpoint("GET", "/access/users", description="User index.", perm=("/access", ["User.Modify"]))
def list_users(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for rec in ctx.access.users():
        out.append(
            {k: v for k, v in rec.items() if k not in ("password_hash", "tokens")}
            | {"tokens": [{"tokenid": t} for t in rec.get("tokens", {})]}
        )
    return out


@endpoint(
    "POST",
    "/access/users",
    perm=("/access", ["User.Modify"]),
    params={
        "userid": USERID,
        "password": Param("string", "Initial password.", optional=True, secret=True, max_length=64),
        "email": Param("string", "", optional=True, max_length=128),
        "firstname": Param("string", "", optional=True, max_length=64),
        "lastname": Param("string", "", optional=True, max_length=64),
        "comment": Param("string", "", optional=True, max_length=2048),
        "enable": Param("boolean", "Enable the account (default).", optional=True, default=1),
        "expire": Param(
            "integer",
            "Account expiration date (seconds since epoch). 0 = never.",
            optional=True,
            minimum=0,
        ),
        "groups": Param("string", "Comma-separated group list.", optional=True),
    },
    description="Create new user.",
)
def create_user(
    ctx: Ctx, userid: str, password: str | None = None, groups: str | None = None, **fields: Any
) -> None:
    if password is not None and len(password) < 8:
        raise ParamError.one("password", "Password must be at least 8 characters long.")
    extra = {k: v for k, v in fields.items() if v is not None}
    if groups:
        extra["groups"] = [g for g in groups.split(",") if g]
    ctx.access.create_user(userid, password=password, **extra)


@endpoint(
    "GET",
    "/access/users/{userid}",
    params={"userid": USERID},
    description="Get user configuration.",
)
def get_user(ctx: Ctx, userid: str) -> dict[str, Any]:
    _own_or(ctx, userid, "User.Modify")
    rec = ctx.access.user(userid)
    if rec is None:
        raise NotFound(f"no such user ('{userid}')")
    return {k: v for k, v in rec.items() if k not in ("password_hash", "tokens")} | {
        "tokens": {
            t: {k: v for k, v in e.items() if k != "hash"} for t, e in rec.get("tokens", {}).items()
        }
    }


USER_FIELDS = {
    "email": Param("string", "", optional=True, max_length=128),
    "firstname": Param("string", "", optional=True, max_length=64),
    "lastname": Param("string", "", optional=True, max_length=64),
    "comment": Param("string", "", optional=True, max_length=2048),
    "enable": Param("boolean", "Enable the account (default).", optional=True),
    "expire": Param(
        "integer", "Account expiration date (seconds since epoch). 0 = never.", optional=True,
        minimum=0,
    ),
}  # fmt: skip


@endpoint(
    "PUT",
    "/access/users/{userid}",
    perm=("/access", ["User.Modify"]),
    params={
        "userid": USERID,
        **USER_FIELDS,
        "groups": Param("string", "Comma-separated group list.", optional=True, max_length=4096),
        "append": Param("boolean", "Add the groups instead of replacing them.", optional=True),
    },
    description="Update user configuration.",
)
def update_user(
    ctx: Ctx, userid: str, groups: str | None = None, append: int = 0, **fields: Any
) -> None:
    if append and groups is None:
        raise ParamError.one("append", "only with 'groups'")
    listed = None if groups is None else [g for g in groups.split(",") if g]
    changes = {k: v for k, v in fields.items() if v is not None}
    ctx.access.update_user(userid, changes, groups=listed, append=bool(append))


@endpoint(
    "DELETE",
    "/access/users/{userid}",
    perm=("/access", ["User.Modify"]),
    params={"userid": USERID},
    description="Delete user (its API tokens and ACL entries with it).",
)
def delete_user(ctx: Ctx, userid: str) -> None:
    if userid == ctx.identity.userid:
        raise ParamError.one("userid", "you cannot delete yourself")
    ctx.access.delete_user(userid)


@endpoint(
    "PUT",
    "/access/password",
    params={
        "userid": USERID,
        "password": Param("string", "The new password.", secret=True, max_length=64),
    },
    description="Change user password.",
)
def change_password(ctx: Ctx, userid: str, password: str) -> None:
    _own_or(ctx, userid, "User.Modify")
    if not userid.endswith("@pve"):
        raise ParamError.one("userid", "only users of the 'pve' realm have a password here")
    if len(password) < 8:
        raise ParamError.one("password", "Password must be at least 8 characters long.")
    ctx.access.set_password(userid, password)


@endpoint(
    "GET",
    "/access/users/{userid}/token",
    params={"userid": USERID},
    description="Get user API tokens.",
)
def list_tokens(ctx: Ctx, userid: str) -> list[dict[str, Any]]:
    _own_or(ctx, userid, "User.Modify")
    return ctx.access.tokens(userid)


@endpoint(
    "GET",
    "/access/users/{userid}/token/{tokenid}",
    params={"userid": USERID, "tokenid": TOKENID},
    description="Get specific API token information.",
)
def get_token(ctx: Ctx, userid: str, tokenid: str) -> dict[str, Any]:
    _own_or(ctx, userid, "User.Modify")
    for tok in ctx.access.tokens(userid):
        if tok["tokenid"] == tokenid:
            return {k: v for k, v in tok.items() if k != "tokenid"}
    raise NotFound(f"no such token '{tokenid}' for user '{userid}'")


@endpoint(
    "POST",
    "/access/users/{userid}/token/{tokenid}",
    params={
        "userid": USERID,
        "tokenid": TOKENID,
        "privsep": Param(
            "boolean",
            "Restrict API token privileges with separate ACLs (default), "
            "or give full privileges of corresponding user.",
            optional=True,
            default=1,
        ),
        "expire": Param(
            "integer",
            "API token expiration date (seconds since epoch). '0' means no expiration date.",
            optional=True,
            minimum=0,
        ),
        "comment": Param("string", "", optional=True, max_length=2048),
    },
    description="Generate a new API token for a specific user. The secret is shown only once.",
)
def create_token(
    ctx: Ctx, userid: str, tokenid: str, privsep: int = 1, expire: int = 0, comment: str = ""
) -> dict[str, Any]:
    _own_or(ctx, userid, "User.Modify")
    if ctx.identity.tokenid is not None:
        raise Forbidden("API tokens cannot create other API tokens")
    return ctx.access.create_token(
        userid, tokenid, privsep=privsep, expire=expire or 0, comment=comment or ""
    )


@endpoint(
    "DELETE",
    "/access/users/{userid}/token/{tokenid}",
    params={"userid": USERID, "tokenid": TOKENID},
    description="Remove API token.",
)
def delete_token(ctx: Ctx, userid: str, tokenid: str) -> None:
    _own_or(ctx, userid, "User.Modify")
    ctx.access.delete_token(userid, tokenid)


@endpoint("GET", "/access/roles", description="Role index.")
def list_roles(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"roleid": r, "privs": ",".join(sorted(p)), "special": 1} for r, p in ROLES.items()]


@endpoint("GET", "/access/acl", perm=("/access", ["Sys.Audit"]), description="Get ACLs.")
def get_acl(ctx: Ctx) -> list[dict[str, Any]]:
    return ctx.access.acl()


@endpoint(
    "PUT",
    "/access/acl",
    perm=("/access", ["Permissions.Modify"]),
    params={
        "path": Param("string", "Access control path", max_length=128, pattern=r"/[\w\-./]*"),
        "roles": Param("string", "List of roles."),
        "users": Param("string", "List of users.", optional=True),
        "tokens": Param("string", "List of API tokens.", optional=True),
        "groups": Param("string", "List of groups.", optional=True),
        "propagate": Param(
            "boolean", "Allow to propagate (inherit) permissions.", optional=True, default=1
        ),
        "delete": Param("boolean", "Remove permissions (instead of adding it).", optional=True),
    },
    description="Update Access Control List (add or remove permissions).",
)
def put_acl(
    ctx: Ctx,
    path: str,
    roles: str,
    users: str | None = None,
    tokens: str | None = None,
    groups: str | None = None,
    propagate: int = 1,
    delete: int = 0,
) -> None:
    if not users and not tokens and not groups:
        raise ParamError.one("users", "one of 'users', 'groups' or 'tokens' is required")
    subjects = [
        (kind, name)
        for kind, listed in (("user", users), ("token", tokens), ("group", groups))
        for name in (listed or "").split(",")
        if name
    ]
    for kind, name in subjects:
        if kind == "group" and not delete and ctx.store.get(f"access/groups/{name}") is None:
            raise ParamError.one("groups", f"group '{name}' does not exist")
    for role in roles.split(","):
        for kind, name in subjects:
            if delete:
                ctx.access.remove_acl(path, name, role, kind=kind)
            else:
                ctx.access.add_acl(path, name, role, kind=kind, propagate=propagate)
