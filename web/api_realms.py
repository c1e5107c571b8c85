"""Authentication domains (/access/domains): LDAP realms added, changed, removed and
synced, as Proxmox declares them. The rules are in cluster/realms.py, the directory in
cluster/ldap_client.py, the sync (a task) in cluster/realm_sync.py."""

from __future__ import annotations

from typing import Any

from corral.cluster import realm_sync, realms
from corral.cluster.errors import ParamError, Unavailable
from corral.cluster.ldap_client import Directory
from corral.cluster.schema import Param
from corral.web.api import Ctx, endpoint

REALM = Param(
    "string", "Authentication domain ID", max_length=32, pattern=r"[A-Za-z][A-Za-z\.\-_0-9]+"
)
ATTR = r"[A-Za-z][A-Za-z0-9\-]*"
ATTR_LIST = rf"{ATTR}([,; ]+{ATTR})*"
SETTINGS = {
    "server1": Param("string", "Server IP address (or DNS name)", optional=True, max_length=256),
    "server2": Param(
        "string", "Fallback Server IP address (or DNS name)", optional=True, max_length=256
    ),
    "port": Param("integer", "Server port.", optional=True, minimum=1, maximum=65535),
    "base_dn": Param("string", "LDAP base domain name", optional=True, max_length=256),
    "user_attr": Param(
        "string", "LDAP user attribute name", optional=True, max_length=256, pattern=ATTR
    ),
    "bind_dn": Param("string", "LDAP bind domain name", optional=True, max_length=256),
    "mode": Param("string", "LDAP protocol mode.", optional=True, enum=realms.MODES),
    "secure": Param(
        "boolean", "Use secure LDAPS protocol. DEPRECATED: use 'mode' instead.", optional=True
    ),
    "verify": Param("boolean", "Verify the server's SSL certificate", optional=True),
    "capath": Param(
        "string",
        "Path to the CA certificate store (a file or a directory)",
        optional=True,
        max_length=256,
    ),
    "filter": Param("string", "LDAP filter for user sync.", optional=True, max_length=2048),
    "user_classes": Param(
        "string", "The objectclasses for users.", optional=True, max_length=512, pattern=ATTR_LIST
    ),
    "group_dn": Param(
        "string",
        "LDAP base domain name for group sync. If not set, the base_dn will be used.",
        optional=True,
        max_length=256,
    ),
    "group_filter": Param("string", "LDAP filter for group sync.", optional=True, max_length=2048),
    "group_classes": Param(
        "string", "The objectclasses for groups.", optional=True, max_length=512, pattern=ATTR_LIST
    ),
    "group_name_attr": Param(
        "string",
        "LDAP attribute representing a groups name.",
        optional=True,
        max_length=256,
        pattern=ATTR,
    ),
    "sync_attributes": Param(
        "string",
        "Comma separated list of key=value pairs for specifying which LDAP attributes map "
        "to which user field (email, firstname, lastname).",
        optional=True,
        max_length=512,
    ),
    "sync-defaults-options": Param(
        "string",
        "The default options for behavior of synchronizations.",
        optional=True,
        max_length=256,
    ),
    "comment": Param("string", "Description.", optional=True, max_length=4096),
    "default": Param("boolean", "Use this as default realm", optional=True),
    "case-sensitive": Param("boolean", "username is case-sensitive", optional=True),
}
PASSWORD = Param("string", "LDAP bind password.", optional=True, secret=True, max_length=256)
CHECK = Param("boolean", "Check bind connection to the server.", optional=True)
REMOVE_VANISHED = Param(
    "string",
    "A semicolon-separated list of things to remove when they or the user vanishes during "
    "a sync: acl, entry, properties; or none.",
    optional=True,
    pattern=r"(none|(acl|entry|properties)(;(acl|entry|properties))*)",
    max_length=64,
)


def _check_connection(ctx: Ctx, realm: str) -> None:
    """Bind with bind_dn and the password now, so a bad setting is a 400, not a later
    failed login."""
    settings, password = realms.settings_with_password(ctx.store, realm)
    try:
        Directory(settings, password)._search_conn().unbind()
    except Unavailable as e:
        raise ParamError.one("check-connection", str(e)) from None


@endpoint(
    "POST",
    "/access/domains",
    params={
        "realm": REALM,
        "type": Param("string", "Realm type.", enum=("ad", "ldap", "openid", "pam", "pve")),
        **SETTINGS,
        "password": PASSWORD,
        "check-connection": CHECK,
    },
    perm=("/access/realm", ["Realm.Allocate"]),
    description="Add an authentication server.",
)
def create_domain(
    ctx: Ctx, realm: str, type: str, password: str | None = None, **fields: Any
) -> None:
    check = fields.pop("check-connection", None)
    realms.create(ctx.store, realm, type, fields, password)
    if check:
        try:
            _check_connection(ctx, realm)
        except ParamError:
            realms.delete(ctx.store, realm)  # a realm that cannot bind is not added
            raise


@endpoint(
    "PUT",
    "/access/domains/{realm}",
    params={
        "realm": REALM,
        **SETTINGS,
        "password": PASSWORD,
        "delete": Param(
            "string", "A list of settings you want to delete.", optional=True, max_length=4096
        ),
        "digest": Param(
            "string", "Ignored (changes are compare-and-swap).", optional=True, max_length=64
        ),
        "check-connection": CHECK,
    },
    perm=("/access/realm", ["Realm.Allocate"]),
    description="Update authentication server settings.",
)
def update_domain(
    ctx: Ctx, realm: str, password: str | None = None, delete: str | None = None, **fields: Any
) -> None:
    check = fields.pop("check-connection", None)
    fields.pop("digest", None)
    drop = [k for k in (delete or "").replace(";", ",").replace(" ", ",").split(",") if k]
    realms.update(ctx.store, realm, fields, password, drop)
    if check:
        _check_connection(ctx, realm)


@endpoint(
    "DELETE",
    "/access/domains/{realm}",
    params={"realm": REALM},
    perm=("/access/realm", ["Realm.Allocate"]),
    description="Delete an authentication server.",
)
def delete_domain(ctx: Ctx, realm: str) -> None:
    realms.delete(ctx.store, realm)


@endpoint(
    "POST",
    "/access/domains/{realm}/sync",
    params={
        "realm": REALM,
        "scope": Param(
            "string", "Select what to sync.", optional=True, enum=("users", "groups", "both")
        ),
        "remove-vanished": REMOVE_VANISHED,
        "enable-new": Param("boolean", "Enable newly synced users immediately.", optional=True),
        "dry-run": Param("boolean", "If set, does not write anything.", optional=True),
    },
    perm=("/access/realm/{realm}", ["Realm.AllocateUser"]),
    description="Syncs users and/or groups from the configured LDAP to corral's users. "
    "Synced groups are named 'name-$realm'.",
)
def sync_domain(ctx: Ctx, realm: str, **given: Any) -> str:
    settings = realms.realm(ctx.store, realm)
    if settings.get("type") != "ldap":
        raise ParamError.one(
            "realm", f"realm '{realm}' is of type '{settings.get('type')}': only LDAP realms sync"
        )
    opts = realm_sync.options(settings, given)
    return ctx.submit(
        node=ctx.node, type=realm_sync.TASK, id=realm, args={"realm": realm, "options": opts}
    )
