"""Find guest drivers and storage plugins through entry points.

A driver whose import fails (its Debian binding is missing, say) becomes a
warning and is reported as unavailable, as Incus does with failed probes; the
node still runs what it can.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger(__name__)

GUEST_DRIVERS = "corral.guest_drivers"
STORAGE_PLUGINS = "corral.storage_plugins"
SERVICES = "corral.services"


@cache
def load(group: str) -> dict[str, Any]:
    """name -> loaded object for every entry point in `group` that imports."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=group):
        try:
            found[ep.name] = ep.load()
        except Exception as err:  # noqa: BLE001 - a broken plugin must not stop the node
            log.warning("plugin %s:%s unavailable: %s", group, ep.name, err)
            UNAVAILABLE.setdefault(group, {})[ep.name] = str(err)
    return found


UNAVAILABLE: dict[str, dict[str, str]] = {}
