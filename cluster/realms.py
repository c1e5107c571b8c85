"""Authentication realms (Proxmox's `/access/domains`): the built-in `pam` and `pve`, and
LDAP directories added by an administrator.

An LDAP realm's settings are `access/domains/{realm}`; its bind password is apart, in
`access/domainpw/{realm}`, so no read of the settings ever carries it (Proxmox keeps it
in /etc/pve/priv/realm/REALM.pw for the same reason). A user `name@realm` of an LDAP
realm must exist in corral (added by hand or by a sync, as in Proxmox); the directory
checks the password by a bind as that user (`cluster/ldap_client.py`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from corral.cluster.errors import Conflict, NotFound, ParamError
from corral.cluster.store_api import StoreAPI

BUILTIN = {
    "pam": {"realm": "pam", "type": "pam", "comment": "Linux PAM standard authentication"},
    "pve": {"realm": "pve", "type": "pve", "comment": "corral authentication server"},
}
REALM_ID = re.compile(r"^[A-Za-z][A-Za-z0-9.\-_]{1,31}$")
MODES = ("ldap", "ldaps", "ldap+starttls")
ATTR = re.compile(r"^[A-Za-z][A-Za-z0-9\-]*$")
HOST = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$"
)
# What a sync may copy into a user record, and from which LDAP attribute by default.
SYNC_FIELDS = {"email": "mail", "firstname": "givenName", "lastname": "sn"}
REMOVE_VANISHED = ("acl", "entry", "properties")
# The keys an LDAP realm keeps (besides `type`); `password` is stored apart.
LDAP_KEYS = (
    "server1",
    "server2",
    "port",
    "base_dn",
    "user_attr",
    "bind_dn",
    "mode",
    "verify",
    "capath",
    "filter",
    "user_classes",
    "group_dn",
    "group_filter",
    "group_classes",
    "group_name_attr",
    "sync_attributes",
    "sync-defaults-options",
    "comment",
    "default",
    "case-sensitive",
)
REQUIRED = ("server1", "base_dn", "user_attr")


def _key(realm: str) -> str:
    return f"access/domains/{realm}"


def _pw_key(realm: str) -> str:
    return f"access/domainpw/{realm}"


def realms(store: StoreAPI) -> list[dict[str, Any]]:
    out = [dict(r) for r in BUILTIN.values()]
    for kv in store.range("access/domains/"):
        rec = kv.value
        out.append({k: rec[k] for k in ("realm", "type", "comment", "default") if k in rec})
    return out


def realm(store: StoreAPI, name: str) -> dict[str, Any]:
    """A realm's settings, never its bind password."""
    if name in BUILTIN:
        return dict(BUILTIN[name])
    rec = store.get_value(_key(name))
    if rec is None:
        raise NotFound(f"domain '{name}' does not exist")
    return dict(rec)


def exists(store: StoreAPI, name: str) -> bool:
    return name in BUILTIN or store.get(_key(name)) is not None


def settings_with_password(store: StoreAPI, name: str) -> tuple[dict[str, Any], str | None]:
    rec = realm(store, name)
    pw = store.get_value(_pw_key(name)) or {}
    return rec, pw.get("password")


# -- validation: each bad value is a 400 naming its parameter --------------------------


def _dn(param: str, value: str) -> None:
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        if not parse_dn(value):
            raise LDAPInvalidDnError("empty")
    except (LDAPInvalidDnError, ValueError, IndexError, TypeError):
        raise ParamError.one(param, f"invalid LDAP distinguished name '{value}'") from None


def _server(param: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not HOST.match(value):
        raise ParamError.one(param, f"invalid address '{value}': an IP address or a DNS name")


def _filter(param: str, value: str) -> None:
    depth = 0
    for ch in value:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if not value.startswith("(") or depth != 0:
        raise ParamError.one(param, f"invalid LDAP filter '{value}' (unbalanced parentheses)")


def _attr_list(param: str, value: str) -> None:
    for attr in re.split(r"[,; ]+", value.strip()):
        if not ATTR.match(attr):
            raise ParamError.one(param, f"invalid LDAP attribute name '{attr}'")


def parse_sync_attributes(value: str) -> dict[str, str]:
    """`email=mail,firstname=givenName` → {field: LDAP attribute}."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in value.split(","))):
        field, sep, attr = item.partition("=")
        if not sep or field not in SYNC_FIELDS or not ATTR.match(attr):
            raise ParamError.one(
                "sync_attributes",
                f"invalid item '{item}': FIELD=ATTRIBUTE with FIELD one of "
                f"{', '.join(SYNC_FIELDS)}",
            )
        out[field] = attr
    return out


def parse_sync_options(value: str, param: str = "sync-defaults-options") -> dict[str, Any]:
    """Proxmox's realm-sync-options: `scope=both,enable-new=1,remove-vanished=acl;entry`."""
    out: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in value.split(","))):
        key, _, val = item.partition("=")
        if key == "scope" and val in ("users", "groups", "both"):
            out[key] = val
        elif key == "enable-new" and val in ("0", "1"):
            out[key] = int(val)
        elif key == "remove-vanished":
            out[key] = check_remove_vanished(val, param)
        else:
            raise ParamError.one(param, f"invalid sync option '{item}'")
    return out


def check_remove_vanished(value: str, param: str = "remove-vanished") -> list[str]:
    if value in ("", "none"):
        return []
    items = [x for x in value.split(";") if x]
    for x in items:
        if x not in REMOVE_VANISHED:
            raise ParamError.one(param, f"unknown item '{x}' (use {', '.join(REMOVE_VANISHED)})")
    return items


def _check(rec: dict[str, Any]) -> None:
    for param in REQUIRED:
        if not rec.get(param):
            raise ParamError.one(param, "property is missing and it is required for type 'ldap'")
    for param in ("server1", "server2"):
        if rec.get(param):
            _server(param, rec[param])
    for param in ("base_dn", "bind_dn", "group_dn"):
        if rec.get(param):
            _dn(param, rec[param])
    for param in ("filter", "group_filter"):
        if rec.get(param):
            _filter(param, rec[param])
    for param in ("user_attr", "group_name_attr", "user_classes", "group_classes"):
        if rec.get(param):
            _attr_list(param, rec[param])
    if rec.get("mode", "ldap") not in MODES:
        raise ParamError.one("mode", f"value '{rec['mode']}' does not have a value in {MODES}")
    if rec.get("sync_attributes"):
        parse_sync_attributes(rec["sync_attributes"])
    if rec.get("sync-defaults-options"):
        parse_sync_options(rec["sync-defaults-options"])
    if rec.get("case-sensitive") == 0:
        raise ParamError.one("case-sensitive", "corral's user IDs are case-sensitive: only 1")
    if rec.get("capath") and not str(rec["capath"]).startswith("/"):
        raise ParamError.one("capath", "an absolute path to a CA file or directory")


def _settings(fields: dict[str, Any]) -> dict[str, Any]:
    # `secure` is Proxmox's deprecated spelling of mode=ldaps.
    if fields.pop("secure", None) and not fields.get("mode"):
        fields["mode"] = "ldaps"
    unknown = sorted(set(fields) - set(LDAP_KEYS))
    if unknown:
        raise ParamError.one(unknown[0], "not a setting of an LDAP realm")
    return {k: v for k, v in fields.items() if v is not None}


def _one_default(store: StoreAPI, name: str) -> None:
    for kv in store.range("access/domains/"):
        if kv.value.get("realm") != name and kv.value.get("default"):
            store.update(
                kv.key, lambda rec: {k: v for k, v in (rec or {}).items() if k != "default"}
            )


def create(
    store: StoreAPI, name: str, type_: str, fields: dict[str, Any], password: str | None
) -> None:
    if not REALM_ID.match(name):
        raise ParamError.one("realm", "invalid format: a letter, then letters, digits, '.-_'")
    if name in BUILTIN or type_ in ("pam", "pve"):
        raise ParamError.one("type", f"realm '{name}' of type '{type_}' is built in; only one")
    if type_ != "ldap":
        raise ParamError.one("type", f"realm type '{type_}' is not implemented (only 'ldap')")
    rec = {"realm": name, "type": type_, **_settings(dict(fields))}
    _check(rec)
    if not store.create(_key(name), rec):
        raise Conflict(f"domain '{name}' already exists")
    if password is not None:
        store.put(_pw_key(name), {"password": password})
    if rec.get("default"):
        _one_default(store, name)


def update(
    store: StoreAPI,
    name: str,
    fields: dict[str, Any],
    password: str | None,
    delete: list[str],
) -> None:
    if name in BUILTIN:
        raise ParamError.one("realm", f"realm '{name}' is built in and has no settings to change")
    for k in delete:
        if k in REQUIRED:
            raise ParamError.one("delete", f"'{k}' is required and cannot be deleted")
        if k not in (*LDAP_KEYS, "password"):
            raise ParamError.one("delete", f"'{k}' is not a setting of an LDAP realm")
    changes = _settings(dict(fields))

    def change(rec: Any) -> Any:
        if rec is None:
            raise NotFound(f"domain '{name}' does not exist")
        new = {k: v for k, v in {**rec, **changes}.items() if k not in delete}
        _check(new)
        return new

    store.update(_key(name), change)
    if password is not None:
        store.put(_pw_key(name), {"password": password})
    elif "password" in delete:
        store.delete(_pw_key(name))
    if changes.get("default"):
        _one_default(store, name)


def delete(store: StoreAPI, name: str) -> None:
    """The realm goes; its users stay (as in Proxmox), unable to log in until it is back."""
    if name in BUILTIN:
        raise ParamError.one("realm", f"realm '{name}' is built in and cannot be removed")
    if not store.delete(_key(name)):
        raise NotFound(f"domain '{name}' does not exist")
    store.delete(_pw_key(name))


def authenticate(store: StoreAPI, name: str, username: str, password: str) -> bool:
    """Check `username`'s password against realm `name`'s directory (by a bind)."""
    from corral.cluster.ldap_client import Directory

    try:
        settings, bind_pw = settings_with_password(store, name)
    except NotFound:
        return False
    if settings.get("type") != "ldap":
        return False
    return Directory(settings, bind_pw).authenticate(username, password)
