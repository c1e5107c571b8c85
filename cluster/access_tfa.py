"""Users' second factors (TOTP), kept in their records under `tfa`.

`tfa: {"entries": [{id, type, description, created, enable, secret, digits,
period, algorithm}], "last_step": N}`. Secrets never leave this module's
callers through the API (entries() drops them).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from corral.cluster import totp
from corral.cluster.errors import NotFound, ParamError
from corral.cluster.store_api import StoreAPI

PUBLIC = ("id", "type", "description", "created", "enable")


def _key(userid: str) -> str:
    return f"access/users/{userid}"


def entries(store: StoreAPI, userid: str) -> list[dict[str, Any]]:
    rec = store.get_value(_key(userid))
    if rec is None:
        raise NotFound(f"no such user ('{userid}')")
    return [{k: e[k] for k in PUBLIC if k in e} for e in rec.get("tfa", {}).get("entries", [])]


def all_entries(store: StoreAPI) -> list[dict[str, Any]]:
    out = []
    for kv in store.range("access/users/"):
        listed = [
            {k: e[k] for k in PUBLIC if k in e} for e in kv.value.get("tfa", {}).get("entries", [])
        ]
        out.append({"userid": kv.value["userid"], "entries": listed})
    return out


def required(store: StoreAPI, userid: str) -> bool:
    rec = store.get_value(_key(userid)) or {}
    return any(e.get("enable", 1) for e in rec.get("tfa", {}).get("entries", []))


def add_totp(store: StoreAPI, userid: str, uri: str, value: str, description: str = "") -> str:
    """Register a TOTP app: `value` must be its current code (proves it has the secret)."""
    params = totp.parse_uri(uri)
    step = totp.match(params, value or "")
    if step is None:
        raise ParamError.one("value", "the code does not match the secret (check the app's clock)")
    entry_id = f"totp-{secrets.token_hex(4)}"
    entry = {"id": entry_id, "type": "totp", "description": description or "",
             "created": int(time.time()), "enable": 1, **params}  # fmt: skip

    def add(rec: Any) -> Any:
        if rec is None:
            raise NotFound(f"no such user ('{userid}')")
        tfa = rec.setdefault("tfa", {})
        tfa.setdefault("entries", []).append(entry)
        tfa["last_step"] = max(int(tfa.get("last_step", 0)), step)  # that code is used up
        return rec

    store.update(_key(userid), add)
    return entry_id


def delete(store: StoreAPI, userid: str, entry_id: str) -> None:
    def remove(rec: Any) -> Any:
        if rec is None:
            raise NotFound(f"no such user ('{userid}')")
        listed = rec.get("tfa", {}).get("entries", [])
        if not any(e["id"] == entry_id for e in listed):
            raise NotFound(f"no such tfa entry '{entry_id}' for '{userid}'")
        rec["tfa"]["entries"] = [e for e in listed if e["id"] != entry_id]
        return rec

    store.update(_key(userid), remove)


def verify(store: StoreAPI, userid: str, given: str, now: float | None = None) -> bool:
    """A current code of one of the user's enabled TOTP entries, not used before."""
    accepted = False

    def use(rec: Any) -> Any:
        nonlocal accepted
        accepted = False
        if rec is None:
            return rec
        tfa = rec.get("tfa", {})
        last = int(tfa.get("last_step", 0))
        for entry in tfa.get("entries", []):
            if not entry.get("enable", 1) or entry.get("type") != "totp":
                continue
            step = totp.match(entry, given, now)
            if step is not None and step > last:
                tfa["last_step"] = step
                accepted = True
                break
        return rec

    store.update(_key(userid), use)  # compare-and-swap: one login per code
    return accepted
