"""Users, tickets, API tokens and ACLs, with Proxmox's formats and semantics.

- Tickets: `PVE:{userid}:{HEXTIME}::{signature}`, valid 2 hours, signed with
  a cluster-wide key kept in etcd (so any node accepts any node's ticket).
- CSRF tokens: `{HEXTIME}:{signature}` bound to the user, required on every
  write made with a ticket cookie.
- API tokens: `USER@REALM!TOKENID` + a random secret shown once; only a hash
  is stored. `privsep=1` tokens get the intersection of the user's and the
  token's own ACLs, as in Proxmox.
- Passwords of the `pve` realm are argon2 hashes; the `pam` realm asks PAM.

Keys: access/users/{userid}, access/acl, access/keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from corral.cluster import realms
from corral.cluster.cluster_view import local_value, local_values
from corral.cluster.errors import Conflict, Forbidden, NotFound, ParamError, Unauthorized
from corral.cluster.schema import FORMATS
from corral.cluster.store_api import StoreAPI

T = TypeVar("T")

log = logging.getLogger(__name__)

TICKET_LIFETIME = 7200
TFA_CHALLENGE_LIFETIME = 300
_hasher = PasswordHasher()

# Roles and their privileges (a subset of Proxmox's, same names).
_VM_AUDIT = ["VM.Audit"]
_VM_USER = _VM_AUDIT + ["VM.Console", "VM.PowerMgmt", "VM.Backup", "VM.Config.CDROM"]
_VM_ADMIN = _VM_USER + [
    "VM.Allocate",
    "VM.Clone",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Disk",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Config.HWType",
    "VM.Config.Cloudinit",
    "VM.Migrate",
    "VM.Monitor",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
]
_DS_ADMIN = [
    "Datastore.Audit",
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Datastore.AllocateTemplate",
]
_SYS = ["Sys.Audit", "Sys.Console", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog"]
_USER = [
    "User.Modify",
    "Permissions.Modify",
    "Group.Allocate",
    "Realm.Allocate",
    "Realm.AllocateUser",
    "Pool.Allocate",
    "Pool.Audit",
    "SDN.Audit",
    "SDN.Allocate",
]
ROLES: dict[str, frozenset[str]] = {
    "Administrator": frozenset(_VM_ADMIN + _DS_ADMIN + _SYS + _USER),
    "PVEAuditor": frozenset(
        ["VM.Audit", "Datastore.Audit", "Sys.Audit", "Pool.Audit", "SDN.Audit"]
    ),
    "PVEVMAdmin": frozenset(_VM_ADMIN),
    "PVEVMUser": frozenset(_VM_USER),
    "PVEDatastoreAdmin": frozenset(_DS_ADMIN),
    "PVEDatastoreUser": frozenset(["Datastore.Audit", "Datastore.AllocateSpace"]),
    "NoAccess": frozenset(),
}


# (ACL entries, the caller's user record, {vmid: pool} when the ACL names pools)
Snapshot = tuple[list[dict[str, Any]], dict[str, Any], dict[int, str]]
_VM_PATH = re.compile(r"^/vms/(\d+)/?$")


@dataclass(frozen=True)
class Identity:
    """Who is calling: a user, or a user's API token."""

    userid: str
    tokenid: str | None = None
    via_cookie: bool = False

    @property
    def name(self) -> str:
        return f"{self.userid}!{self.tokenid}" if self.tokenid else self.userid


def split_userid(userid: str) -> tuple[str, str]:
    try:
        FORMATS["pve-userid"](userid)
    except ValueError as err:
        raise ParamError.one("username", str(err)) from None
    name, _, realm = userid.rpartition("@")
    return name, realm


class Access:
    def __init__(self, store: StoreAPI, services: MutableMapping[str, Any] | None = None) -> None:
        self.store = store
        # The node's services: with its in-memory view started, users and the ACL are
        # read from memory (cluster_view.local_value) instead of etcd on every request.
        self.services = services
        self._keys: dict[str, bytes] | None = None
        self._request = threading.local()  # see request_scope() and _authoritative()

    @contextmanager
    def request_scope(self) -> Iterator[None]:
        """Within one API request (this thread), the caller's user record is read from
        the store once, not again by each of ticket/token check, "is it enabled" and
        the privilege check (each read is an etcd round trip on every request)."""
        self._request.users = {}
        try:
            yield
        finally:
            self._request.users = None

    def _read(self, key: str, default: Any = None) -> Any:
        if getattr(self._request, "authoritative", False):
            return self.store.get_value(key, default)
        return local_value(self.services, self.store, key, default)

    def _authoritative(self, fn: Callable[[], T]) -> T:
        """Run a check; when it refuses, run it again on records read from etcd
        itself: a user, token or grant made on another node a moment ago may not
        have reached this node's memory yet, and must not be refused for that."""
        try:
            return fn()
        except (Unauthorized, Forbidden):
            if self.services is None or getattr(self._request, "authoritative", False):
                raise
        users = getattr(self._request, "users", None)
        self._request.authoritative = True
        if users is not None:
            self._request.users = {}
        try:
            return fn()
        finally:
            self._request.authoritative = False

    def _caller(self, userid: str) -> dict[str, Any] | None:
        """user(userid), read once per request_scope()."""
        users = getattr(self._request, "users", None)
        if users is None:
            return self.user(userid)
        if userid not in users:
            users[userid] = self.user(userid)
        return users[userid]

    # -- keys ---------------------------------------------------------------
    def _key(self, which: str) -> bytes:
        if self._keys is None:
            self.store.create(
                "access/keys",
                {
                    "ticket": base64.b64encode(secrets.token_bytes(32)).decode(),
                    "csrf": base64.b64encode(secrets.token_bytes(32)).decode(),
                },
            )
            raw = self.store.get_value("access/keys")
            self._keys = {k: base64.b64decode(v) for k, v in raw.items()}
        return self._keys[which]

    def _sign(self, which: str, text: str) -> str:
        mac = hmac.new(self._key(which), text.encode(), hashlib.sha256).digest()
        return base64.b64encode(mac).decode().rstrip("=")

    # -- users --------------------------------------------------------------
    def user(self, userid: str) -> dict[str, Any] | None:
        return self._read(f"access/users/{userid}")  # type: ignore[no-any-return]

    def users(self) -> list[dict[str, Any]]:
        return [kv.value for kv in self.store.range("access/users/")]

    def create_user(
        self, userid: str, *, password: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        _, realm = split_userid(userid)
        if not realms.exists(self.store, realm):
            raise ParamError.one("userid", f"unknown realm '{realm}'")
        record: dict[str, Any] = {
            "userid": userid,
            "enable": 1,
            "expire": 0,
            "tokens": {},
            **fields,
        }
        if password is not None:
            if realm != "pve":
                keeper = "PAM" if realm == "pam" else "the directory"
                raise ParamError.one(
                    "password", f"passwords are kept by {keeper} for realm '{realm}'"
                )
            record["password_hash"] = _hasher.hash(password)
        if not self.store.create(f"access/users/{userid}", record):
            raise Conflict(f"user '{userid}' already exists")
        return record

    def update_user(
        self,
        userid: str,
        fields: dict[str, Any],
        *,
        groups: list[str] | None = None,
        append: bool = False,
    ) -> None:
        """Change a user's attributes; `groups` replaces the memberships (or adds to
        them with `append`), each group checked to exist."""
        for group in groups or []:
            if self.store.get(f"access/groups/{group}") is None:
                raise ParamError.one("groups", f"group '{group}' does not exist")

        def change(rec: Any) -> Any:
            if rec is None:
                raise NotFound(f"no such user ('{userid}')")
            rec.update(fields)
            if groups is not None:
                have = list(rec.get("groups", [])) if append else []
                rec["groups"] = have + [g for g in groups if g not in have]
            return rec

        self.store.update(f"access/users/{userid}", change)

    def delete_user(self, userid: str) -> None:
        """Remove a user, its API tokens and every ACL entry naming either (as Proxmox)."""
        if not self.store.delete(f"access/users/{userid}"):
            raise NotFound(f"no such user ('{userid}')")
        self.store.update(
            "access/acl",
            lambda entries: [
                e for e in entries or []
                if e["ugid"] != userid and not e["ugid"].startswith(f"{userid}!")
            ],
        )  # fmt: skip

    def set_password(self, userid: str, password: str) -> None:
        def change(rec: Any) -> Any:
            if rec is None:
                raise NotFound(f"no such user ('{userid}')")
            rec["password_hash"] = _hasher.hash(password)
            return rec

        self.store.update(f"access/users/{userid}", change)

    def check_password(self, userid: str, password: str) -> bool:
        _, realm = split_userid(userid)
        rec = self.user(userid)
        if realm == "pam":
            # As in Proxmox: PAM checks the password, but only root@pam and users
            # added to corral may log in.
            if rec is None and userid != "root@pam":
                return False
            if rec is not None and (not rec.get("enable", 1) or _expired(rec.get("expire", 0))):
                return False
            return _pam_authenticate(userid.rpartition("@")[0], password)
        if realm != "pve":
            # An LDAP realm: the user must exist here (as in Proxmox), the directory
            # checks the password; a directory that cannot be reached raises Unavailable.
            if rec is None or not rec.get("enable", 1) or _expired(rec.get("expire", 0)):
                return False
            return realms.authenticate(self.store, realm, userid.rpartition("@")[0], password)
        if rec is None or not rec.get("enable", 1) or _expired(rec.get("expire", 0)):
            return False
        try:
            return bool(_hasher.verify(rec.get("password_hash", ""), password))
        except (VerificationError, InvalidHashError):
            return False

    # -- tickets --------------------------------------------------------------
    def issue_ticket(self, userid: str, now: float | None = None) -> tuple[str, str]:
        stamp = f"{int(now or time.time()):08X}"
        plain = f"PVE:{userid}:{stamp}"
        ticket = f"{plain}::{self._sign('ticket', plain)}"
        csrf = f"{stamp}:{self._sign('csrf', f'{stamp}:{userid}')}"
        return ticket, csrf

    def verify_ticket(self, ticket: str, now: float | None = None) -> str:
        return self._authoritative(lambda: self._verify_ticket(ticket, now))

    def _verify_ticket(self, ticket: str, now: float | None) -> str:
        plain, sep, sig = ticket.partition("::")
        parts = plain.split(":")
        if not sep or len(parts) != 3 or parts[0] != "PVE":
            raise Unauthorized("invalid ticket")
        if not hmac.compare_digest(self._sign("ticket", plain), sig):
            raise Unauthorized("invalid ticket")
        try:
            issued = int(parts[2], 16)
        except ValueError:
            raise Unauthorized("invalid ticket") from None
        age = (now or time.time()) - issued
        if age > TICKET_LIFETIME or age < -300:
            raise Unauthorized("ticket expired")
        userid = parts[1]
        self._require_active(userid)
        return userid

    # A password checked, the second factor pending (Proxmox's `PVE:!tfa!` ticket). Signed
    # over a different text than tickets, so it never passes for one.
    def issue_tfa_challenge(self, userid: str, now: float | None = None) -> str:
        plain = f"PVE:!tfa!{userid}:{int(now or time.time()):08X}"
        return f"{plain}::{self._sign('ticket', 'tfa-challenge:' + plain)}"

    def verify_tfa_challenge(self, challenge: str, now: float | None = None) -> str:
        plain, sep, sig = challenge.partition("::")
        head, _, stamp = plain.rpartition(":")
        if not sep or not head.startswith("PVE:!tfa!"):
            raise Unauthorized("invalid tfa challenge")
        if not hmac.compare_digest(self._sign("ticket", "tfa-challenge:" + plain), sig):
            raise Unauthorized("invalid tfa challenge")
        try:
            age = (now or time.time()) - int(stamp, 16)
        except ValueError:
            raise Unauthorized("invalid tfa challenge") from None
        if age > TFA_CHALLENGE_LIFETIME or age < -300:
            raise Unauthorized("tfa challenge expired")
        return head[len("PVE:!tfa!") :]

    def verify_csrf(self, token: str | None, userid: str, now: float | None = None) -> None:
        if not token:
            raise Unauthorized("Permission check failed - invalid csrf token")
        stamp, _, sig = token.partition(":")
        if not hmac.compare_digest(self._sign("csrf", f"{stamp}:{userid}"), sig):
            raise Unauthorized("Permission check failed - invalid csrf token")
        try:
            age = (now or time.time()) - int(stamp, 16)
        except ValueError:
            raise Unauthorized("Permission check failed - invalid csrf token") from None
        if age > TICKET_LIFETIME or age < -300:
            raise Unauthorized("Permission check failed - invalid csrf token")

    def _require_active(self, userid: str) -> None:
        _, realm = split_userid(userid)
        rec = self._caller(userid)
        if rec is None:
            if realm == "pam" and userid == "root@pam":
                return
            raise Unauthorized(f"user '{userid}' does not exist")
        if not rec.get("enable", 1) or _expired(rec.get("expire", 0)):
            raise Unauthorized(f"user '{userid}' is disabled")

    # -- API tokens -------------------------------------------------------------
    def create_token(
        self, userid: str, tokenid: str, *, privsep: int = 1, expire: int = 0, comment: str = ""
    ) -> dict[str, Any]:
        FORMATS["pve-tokenid"](tokenid)
        secret = str(uuid.uuid4())
        entry = {
            "privsep": privsep,
            "expire": expire,
            "comment": comment,
            "hash": _token_hash(secret),
        }

        def add(rec: Any) -> Any:
            if rec is None:
                if userid != "root@pam":
                    raise NotFound(f"no such user ('{userid}')")
                rec = {"userid": userid, "enable": 1, "expire": 0, "tokens": {}}
            if tokenid in rec.setdefault("tokens", {}):
                raise Conflict("Token already exists.")
            rec["tokens"][tokenid] = entry
            return rec

        self.store.update(f"access/users/{userid}", add)
        return {
            "full-tokenid": f"{userid}!{tokenid}",
            "value": secret,
            "info": {k: v for k, v in entry.items() if k != "hash"},
        }

    def delete_token(self, userid: str, tokenid: str) -> None:
        def remove(rec: Any) -> Any:
            if rec is None or tokenid not in rec.get("tokens", {}):
                raise NotFound(f"no such token '{tokenid}' for user '{userid}'")
            del rec["tokens"][tokenid]
            return rec

        self.store.update(f"access/users/{userid}", remove)

    def tokens(self, userid: str) -> list[dict[str, Any]]:
        rec = self.user(userid)
        if rec is None:
            raise NotFound(f"no such user ('{userid}')")
        return [
            {"tokenid": t, **{k: v for k, v in e.items() if k != "hash"}}
            for t, e in sorted(rec.get("tokens", {}).items())
        ]

    def verify_token(self, header_value: str) -> Identity:
        """`USER@REALM!TOKENID=SECRET` (after `PVEAPIToken=`)."""
        return self._authoritative(lambda: self._verify_token(header_value))

    def _verify_token(self, header_value: str) -> Identity:
        full, sep, secret = header_value.partition("=")
        if not sep:
            full, sep, secret = header_value.partition(":")
        userid, bang, tokenid = full.partition("!")
        if not sep or not bang or not secret:
            raise Unauthorized("invalid API token format")
        rec = self._caller(userid)
        entry = (rec or {}).get("tokens", {}).get(tokenid)
        if rec is None or entry is None:
            raise Unauthorized("invalid token value")
        if not hmac.compare_digest(entry["hash"], _token_hash(secret)):
            raise Unauthorized("invalid token value")
        if _expired(entry.get("expire", 0)):
            raise Unauthorized("token expired")
        self._require_active(userid)
        return Identity(userid, tokenid)

    # -- ACLs ---------------------------------------------------------------
    def acl(self) -> list[dict[str, Any]]:
        return self._read("access/acl", [])  # type: ignore[no-any-return]

    def add_acl(
        self, path: str, ugid: str, roleid: str, *, kind: str = "user", propagate: int = 1
    ) -> None:
        if roleid not in ROLES:
            raise ParamError.one("roles", f"role '{roleid}' does not exist")

        def add(entries: Any) -> Any:
            entries = [
                e
                for e in entries or []
                if not (e["path"] == path and e["ugid"] == ugid and e["roleid"] == roleid)
            ]
            entries.append(
                {"path": path, "ugid": ugid, "type": kind, "roleid": roleid, "propagate": propagate}
            )
            return entries

        self.store.update("access/acl", add)

    def remove_acl(self, path: str, ugid: str, roleid: str, *, kind: str = "user") -> None:
        """Drop one entry (missing ones are not an error, as in Proxmox)."""

        def remove(entries: Any) -> Any:
            return [
                e for e in entries or []
                if not (e["path"] == path and e["ugid"] == ugid and e["roleid"] == roleid
                        and e["type"] == kind)
            ]  # fmt: skip

        self.store.update("access/acl", remove)

    def snapshot(self, ident: Identity) -> Snapshot:
        """The ACL, the caller's record and (when the ACL names a pool) the guests'
        pools, read once for many privilege checks."""
        entries = self.acl()
        pools: dict[int, str] = {}
        if any(str(e.get("path", "")).startswith("/pool/") for e in entries):
            if getattr(self._request, "authoritative", False):
                found = [kv.value for kv in self.store.range("access/pools/")]
            else:
                found = local_values(self.services, self.store, "access/pools/")
            for pool in found:
                for vmid in pool.get("vms", []):
                    pools[int(vmid)] = pool["poolid"]
        return entries, self._caller(ident.userid) or {}, pools

    def privileges(
        self,
        ident: Identity,
        path: str,
        *,
        snapshot: Snapshot | None = None,
    ) -> frozenset[str]:
        if ident.userid == "root@pam" and ident.tokenid is None:
            return ROLES["Administrator"]
        entries, rec, pools = snapshot if snapshot is not None else self.snapshot(ident)
        # As Proxmox: a guest in a pool also gets what is granted on /pool/{pool}.
        pool = None
        match = _VM_PATH.match(path)
        if match and pools:
            pool = pools.get(int(match.group(1)))

        def resolve(ugid: str, groups: set[str], kind: str) -> frozenset[str]:
            have = _effective(entries, path, ugid, groups, kind)
            if pool is not None:
                have = have | _effective(entries, f"/pool/{pool}", ugid, groups, kind)
            return have

        groups = set(rec.get("groups", []))
        user_privs = resolve(ident.userid, groups, "user")
        if ident.userid == "root@pam":
            user_privs = ROLES["Administrator"]
        if ident.tokenid is None:
            return user_privs
        entry = rec.get("tokens", {}).get(ident.tokenid, {})
        if not entry.get("privsep", 1):
            return user_privs
        token_privs = resolve(ident.name, set(), "token")
        return user_privs & token_privs

    def check(self, ident: Identity, path: str, privs: list[str], *, any_of: bool = False) -> None:
        def run() -> None:
            have = self.privileges(ident, path)
            ok = any(p in have for p in privs) if any_of else all(p in have for p in privs)
            if not ok:
                raise Forbidden(f"Permission check failed ({path}, {', '.join(privs)})")

        self._authoritative(run)


def _effective(
    entries: list[dict[str, Any]], path: str, ugid: str, groups: set[str], kind: str
) -> frozenset[str]:
    """Privileges from the most specific ACL path that applies, as Proxmox resolves them."""
    parts = [p for p in path.split("/") if p]
    best: frozenset[str] | None = None
    for depth in range(len(parts) + 1):
        prefix = "/" + "/".join(parts[:depth])
        exact = depth == len(parts)
        found: set[str] = set()
        matched = False
        for e in entries:
            if e["path"].rstrip("/") != prefix.rstrip("/") and not (
                prefix == "/" and e["path"] == "/"
            ):
                continue
            if not exact and not e.get("propagate", 1):
                continue
            if (e["type"] == kind and e["ugid"] == ugid) or (
                kind == "user" and e["type"] == "group" and e["ugid"] in groups
            ):
                matched = True
                found |= ROLES.get(e["roleid"], frozenset())
        if matched:
            best = frozenset(found)
    return best or frozenset()


def _expired(expire: int) -> bool:
    return bool(expire) and expire < time.time()


def _token_hash(secret: str) -> str:
    # Token secrets are random UUIDs (122 bits): a fast hash is enough and keeps
    # every API call cheap, unlike passwords.
    return hashlib.sha256(secret.encode()).hexdigest()


def _pam_authenticate(user: str, password: str) -> bool:
    try:
        import pam
    except ImportError:
        log.warning("python-pam is missing: the pam realm cannot log in")
        return False
    try:
        return bool(pam.authenticate(user, password, service="login"))
    except Exception as err:  # noqa: BLE001 - PAM failures mean "no"
        log.warning("PAM error: %s", err)
        return False
