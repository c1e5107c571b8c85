"""An LDAP realm's directory, through ldap3 (pure Python): find a user's DN, check a
password by binding as that DN, and list the users and groups a sync copies.

Every connection has a connect timeout and every operation a receive timeout
(`TIMEOUT`), so a directory that is down or hangs costs a login a few seconds, never a
stuck worker. Transport and TLS trouble becomes `Unavailable` (503) naming the server;
a wrong password is just a failed bind.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from corral.cluster.errors import Unavailable

log = logging.getLogger(__name__)

TIMEOUT = 5  # seconds; an int: ldap3 packs it into SO_RCVTIMEO
DEFAULT_PORTS = {"ldap": 389, "ldap+starttls": 389, "ldaps": 636}
USER_CLASSES = "inetorgperson, posixaccount, person, user"
GROUP_CLASSES = "groupOfNames, group, univentionGroup, ipausergroup"
INVALID_CREDENTIALS = 49


@dataclass
class Entry:
    dn: str
    attrs: dict[str, list[str]] = field(default_factory=dict)

    def first(self, name: str) -> str | None:
        for k, v in self.attrs.items():
            if k.lower() == name.lower() and v:
                return str(v[0])
        return None

    def all(self, name: str) -> list[str]:
        return [str(x) for k, v in self.attrs.items() if k.lower() == name.lower() for x in v]


def _classes(text: str) -> str:
    return "".join(
        f"(objectclass={c})" for c in text.replace(";", ",").split(",") if c.strip()
    ).replace(" ", "")


class Directory:
    """One realm's directory, built from its settings (cluster/realms.py) and bind password."""

    def __init__(self, settings: dict[str, Any], bind_password: str | None) -> None:
        self.s = settings
        self.bind_password = bind_password
        self.mode = settings.get("mode", "ldap")

    # -- connections ----------------------------------------------------------
    def _servers(self) -> list[Any]:
        import ldap3

        verify = bool(self.s.get("verify"))
        capath = self.s.get("capath")
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
            ca_certs_file=capath if capath and os.path.isfile(capath) else None,
            ca_certs_path=capath if capath and os.path.isdir(capath) else None,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
        port = int(self.s.get("port") or DEFAULT_PORTS[self.mode])
        return [
            ldap3.Server(
                self.s[k],
                port=port,
                use_ssl=self.mode == "ldaps",
                tls=tls,
                connect_timeout=TIMEOUT,
                get_info=ldap3.NONE,
            )
            for k in ("server1", "server2")
            if self.s.get(k)
        ]

    def _bind(self, user: str | None, password: str | None) -> tuple[Any, bool]:
        """A connection bound as `user` (anonymous when None): (connection, bound?).
        Tries server1, then server2; raises Unavailable when neither answers."""
        import ldap3
        from ldap3.core.exceptions import LDAPException

        problems = []
        for server in self._servers():
            conn = ldap3.Connection(
                server,
                user=user,
                password=password,
                receive_timeout=TIMEOUT,
                auto_bind=ldap3.AUTO_BIND_NONE,
                read_only=True,
                raise_exceptions=False,
                auto_referrals=False,
            )
            try:
                conn.open()
                if self.mode == "ldap+starttls" and not conn.start_tls():
                    raise Unavailable(f"STARTTLS refused: {conn.result.get('description')}")
                bound = bool(conn.bind())
            except (LDAPException, OSError, Unavailable) as e:
                problems.append(f"{self.mode}://{server.host}:{server.port}: {_reason(e)}")
                conn.unbind()
                continue
            if not bound and conn.result.get("result") != INVALID_CREDENTIALS:
                problems.append(f"{server.host}: bind refused ({conn.result.get('description')})")
                conn.unbind()
                continue
            return conn, bound
        log.warning("realm %s: LDAP unreachable: %s", self.s.get("realm"), "; ".join(problems))
        raise Unavailable(
            f"LDAP server of realm '{self.s.get('realm')}' unreachable: {'; '.join(problems)}"
        )

    def _search_conn(self) -> Any:
        conn, bound = self._bind(self.s.get("bind_dn"), self.bind_password)
        if not bound:
            conn.unbind()
            raise Unavailable(
                f"realm '{self.s.get('realm')}': bind_dn/password refused by the directory"
            )
        return conn

    def _search(self, conn: Any, base: str, flt: str, attrs: list[str]) -> list[Entry]:
        import ldap3
        from ldap3.core.exceptions import LDAPException

        try:
            ok = conn.search(
                base, flt, search_scope=ldap3.SUBTREE, attributes=attrs, time_limit=int(TIMEOUT)
            )
        except (LDAPException, OSError) as e:
            raise Unavailable(
                f"realm '{self.s.get('realm')}': LDAP search failed: {_reason(e)}"
            ) from e
        if not ok and conn.result.get("result") not in (0, 32):  # 32: no such object
            why = conn.result.get("description")
            raise Unavailable(f"realm '{self.s.get('realm')}': LDAP search failed: {why}")
        return [
            Entry(
                r["dn"],
                {k: list(v) if isinstance(v, list) else [v] for k, v in r["attributes"].items()},
            )
            for r in conn.response or []
            if r.get("type") == "searchResEntry"
        ]

    def _user_filter(self) -> str:
        classes = _classes(self.s.get("user_classes") or USER_CLASSES)
        return f"(|{classes}){self.s.get('filter') or ''}"

    # -- what the realm needs ------------------------------------------------------
    def authenticate(self, username: str, password: str) -> bool:
        """Find the user's entry, then bind as it with the password."""
        if not password:
            return False  # an empty password would be an unauthenticated bind: success
        from ldap3.utils.conv import escape_filter_chars

        conn = self._search_conn()
        try:
            me = f"({self.s['user_attr']}={escape_filter_chars(username)})"
            flt = f"(&{me}{self._user_filter()})"
            found = self._search(conn, self.s["base_dn"], flt, ["1.1"])
        finally:
            conn.unbind()
        if len(found) != 1:
            return False
        conn, bound = self._bind(found[0].dn, password)
        conn.unbind()
        return bound

    def users(self, attrs: list[str]) -> list[Entry]:
        conn = self._search_conn()
        try:
            flt = f"(&{self._user_filter()})"
            return self._search(conn, self.s["base_dn"], flt, [self.s["user_attr"], *attrs])
        finally:
            conn.unbind()

    def groups(self) -> list[Entry]:
        conn = self._search_conn()
        try:
            classes = _classes(self.s.get("group_classes") or GROUP_CLASSES)
            flt = f"(&(|{classes}){self.s.get('group_filter') or ''})"
            attrs = ["member", "uniqueMember", "memberUid"]
            if self.s.get("group_name_attr"):
                attrs.append(self.s["group_name_attr"])
            return self._search(conn, self.s.get("group_dn") or self.s["base_dn"], flt, attrs)
        finally:
            conn.unbind()


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]
