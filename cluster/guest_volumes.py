"""Which volumes a guest's record uses: the one answer to "who uses this volume".

The guest's driver knows its config keys (`GuestDriver.volumes_of`); both the
current config and the pending changes count, as a pending disk must not be
freed under the guest. A node without the driver for a record's type (liblxc
or libvirt missing there) still has to answer for the whole cluster, so it
falls back to reading volume IDs where Proxmox's formats put them: the first
item of a value (`local:vm-100-disk-0,size=8G`) and a `volume=` option.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from corral.cluster.guest_driver import GuestDriver

# STORAGE:VOLNAME, where the volume name is not a size to allocate (`local:4`).
_VOLID = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]:(?!\d+(\.\d+)?$)\S+$", re.IGNORECASE)


def _generic(config: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for value in config.values():
        if not isinstance(value, str):
            continue
        parts = value.split(",")
        candidates = [parts[0], *(p[len("volume=") :] for p in parts if p.startswith("volume="))]
        found.update(c for c in candidates if _VOLID.match(c))
    return found


def volumes_of_config(config: Mapping[str, Any], driver: GuestDriver | None) -> set[str]:
    if driver is None:
        return _generic(config)
    return set(driver.volumes_of(dict(config)).values())


def volumes_in(rec: Mapping[str, Any], drivers: Mapping[str, GuestDriver]) -> set[str]:
    """Volume IDs in the record's config and its pending changes."""
    driver = drivers.get(str(rec.get("type")))
    config = dict(rec.get("config") or {})
    pending = {**config, **(rec.get("pending") or {})}
    return volumes_of_config(config, driver) | volumes_of_config(pending, driver)
