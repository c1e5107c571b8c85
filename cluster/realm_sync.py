"""Syncing an LDAP realm's users and groups into corral (Proxmox's
`POST /access/domains/{realm}/sync`), as a task (`auth-realm-sync`) with a log.

- Users become `name@realm` (name from `user_attr`), new ones enabled unless
  `enable-new=0`; `email`, `firstname`, `lastname` are copied from the attributes
  `sync_attributes` names (by default mail, givenName, sn).
- Groups become `name-realm` (name from `group_name_attr`, else the first value of
  the entry's DN), so they never overwrite a group made by hand; their members are the
  realm's users the group's `member`/`uniqueMember` DNs or `memberUid` names point to.
- `remove-vanished` (a list): `entry` removes users and groups of the realm the
  directory no longer has; `acl` removes their ACL entries; `properties` clears user
  fields the directory no longer sets. `dry-run` logs what would change, writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from corral.cluster import access_groups, realms
from corral.cluster.access import Access
from corral.cluster.errors import NotFound, ParamError
from corral.cluster.ldap_client import Directory, Entry
from corral.cluster.store_api import StoreAPI
from corral.cluster.tasks import TaskContext, task_handler

TASK = "auth-realm-sync"
USER_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,60}")  # the name part of a pve-userid


def options(settings: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The sync's options: what the call gives, else the realm's sync-defaults-options."""
    defaults = realms.parse_sync_options(settings.get("sync-defaults-options") or "")
    out = {
        "scope": defaults.get("scope"),
        "enable-new": defaults.get("enable-new", 1),
        "remove-vanished": defaults.get("remove-vanished", []),
        "dry-run": 0,
    }
    for k in ("scope", "enable-new", "dry-run"):
        if given.get(k) is not None:
            out[k] = given[k]
    if given.get("remove-vanished") is not None:
        out["remove-vanished"] = realms.check_remove_vanished(given["remove-vanished"])
    if out["scope"] not in ("users", "groups", "both"):
        raise ParamError.one(
            "scope",
            "required: users, groups or both (or set it in the realm's sync-defaults-options)",
        )
    return out


def _user_name(settings: dict[str, Any], e: Entry) -> str | None:
    name = e.first(settings["user_attr"])
    return name if name and USER_NAME.fullmatch(name) else None


def _group_name(settings: dict[str, Any], e: Entry) -> str | None:
    from ldap3.utils.dn import parse_dn

    name = e.first(settings["group_name_attr"]) if settings.get("group_name_attr") else None
    if not name:
        name = parse_dn(e.dn)[0][1]
    return name if access_groups.GROUP_ID.match(f"{name}-x") else None


def sync(store: StoreAPI, realm: str, opts: dict[str, Any], log: Any) -> dict[str, int]:
    settings, bind_pw = realms.settings_with_password(store, realm)
    if settings.get("type") != "ldap":
        raise ParamError.one(
            "realm", f"realm '{realm}' is of type '{settings.get('type')}': only LDAP realms sync"
        )
    directory = Directory(settings, bind_pw)
    fields = {
        **realms.SYNC_FIELDS,
        **realms.parse_sync_attributes(settings.get("sync_attributes") or ""),
    }
    dry = bool(opts["dry-run"])
    vanish = set(opts["remove-vanished"])
    do_users = opts["scope"] in ("users", "both")
    do_groups = opts["scope"] in ("groups", "both")
    access = Access(store)
    counts = {"users": 0, "groups": 0, "removed": 0}
    prefix = "(dry run) " if dry else ""

    entries = directory.users(sorted(set(fields.values())))
    by_dn: dict[str, str] = {}
    found: dict[str, dict[str, str]] = {}
    for e in entries:
        name = _user_name(settings, e)
        if name is None:
            log(f"skipping {e.dn}: no usable '{settings['user_attr']}'")
            continue
        userid = f"{name}@{realm}"
        by_dn[e.dn.lower()] = userid
        found[userid] = {f: v for f, attr in fields.items() if (v := e.first(attr)) is not None}

    mine = {u["userid"]: u for u in access.users() if u["userid"].endswith(f"@{realm}")}
    if do_users:
        for userid, attrs in sorted(found.items()):
            if userid not in mine:
                log(f"{prefix}adding user {userid}")
                if not dry:
                    access.create_user(userid, enable=int(opts["enable-new"]), **attrs)
            else:
                drop = (
                    [f for f in fields if f in mine[userid] and f not in attrs]
                    if "properties" in vanish
                    else []
                )
                changed = {k: v for k, v in attrs.items() if mine[userid].get(k) != v}
                if changed or drop:
                    log(f"{prefix}updating user {userid}")
                    if not dry:
                        store.update(f"access/users/{userid}", _patched(changed, drop))
            counts["users"] += 1
        for userid in sorted(set(mine) - set(found)):
            _vanished(store, access, "user", userid, vanish, dry, log, counts)

    if do_groups:
        groups = {}
        for g in directory.groups():
            name = _group_name(settings, g)
            if name is None:
                log(f"skipping group {g.dn}: no usable name")
                continue
            members = {
                by_dn[m.lower()]
                for m in g.all("member") + g.all("uniqueMember")
                if m.lower() in by_dn
            }
            members |= {f"{m}@{realm}" for m in g.all("memberUid") if f"{m}@{realm}" in found}
            groups[f"{name}-{realm}"] = members
        have = {x["groupid"] for x in access_groups.groups(store)}
        for gid in sorted(groups):
            if gid not in have:
                log(f"{prefix}adding group {gid}")
                if not dry:
                    access_groups.create_group(store, gid, f"synced from realm {realm}")
            counts["groups"] += 1
        if not dry:
            # Memberships in the realm's groups follow the directory; others stay as they are.
            for u in access.users():
                if not u["userid"].endswith(f"@{realm}"):
                    continue
                want = sorted(g for g, m in groups.items() if u["userid"] in m)
                keep = [g for g in u.get("groups", []) if not g.endswith(f"-{realm}")]
                if sorted(u.get("groups", [])) != sorted(keep + want):
                    log(f"groups of {u['userid']}: {', '.join(keep + want) or '(none)'}")
                    store.update(f"access/users/{u['userid']}", _patched({"groups": keep + want}))
        for gid in sorted(g for g in have if g.endswith(f"-{realm}") and g not in groups):
            _vanished(store, access, "group", gid, vanish, dry, log, counts)
    log(
        f"synced {counts['users']} user(s), {counts['groups']} group(s) of realm {realm}; "
        f"removed {counts['removed']}"
    )
    return counts


def _patched(changes: dict[str, Any], drop: Sequence[str] = ()) -> Callable[[Any], Any]:
    """A user record's change for store.update: set `changes`, remove the `drop` keys."""

    def change(rec: Any) -> Any:
        if rec is None:
            raise NotFound("the user was removed during the sync")
        return {k: v for k, v in {**rec, **changes}.items() if k not in drop}

    return change


def _vanished(
    store: StoreAPI,
    access: Access,
    kind: str,
    ugid: str,
    vanish: set[str],
    dry: bool,
    log: Any,
    counts: dict[str, int],
) -> None:
    prefix = "(dry run) " if dry else ""
    if "entry" in vanish:
        log(f"{prefix}removing vanished {kind} {ugid}")
        counts["removed"] += 1
        if not dry:
            # Removing the entry removes its ACL entries too (as for any user or group).
            if kind == "user":
                access.delete_user(ugid)
            else:
                access_groups.delete_group(store, ugid)
    elif "acl" in vanish:
        log(f"{prefix}removing the ACL entries of vanished {kind} {ugid}")
        if not dry:
            store.update(
                "access/acl",
                lambda entries: [
                    e for e in entries or [] if not (e["ugid"] == ugid and e["type"] == kind)
                ],
            )
    else:
        log(f"{kind} {ugid} is no longer in the directory (kept: remove-vanished has no 'entry')")


@task_handler(TASK)
def _run(ctx: TaskContext, args: dict[str, Any]) -> None:
    sync(ctx.store, args["realm"], args["options"], ctx.log)
