"""The Proxmox API schema (shared/reference/pve-apidoc.js), read at test time.

The reference is data beside the repository (a copy of shared/ sits next to
the checkout, in CI too); it is never copied into the repository. Tests that
compare corral's declarations with Proxmox's read it through `methods()`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

_REPO = Path(__file__).resolve().parent.parent
CANDIDATES = (_REPO.parent / "shared" / "reference", Path("/work/shared/reference"))


def reference_dir() -> Path:
    for path in CANDIDATES:
        if (path / "pve-apidoc.js").exists():
            return path
    pytest.skip(
        "the Proxmox API reference (shared/reference/pve-apidoc.js) is not beside the checkout"
    )


@functools.cache
def methods() -> dict[tuple[str, str], dict[str, Any]]:
    """{(METHOD, '/nodes/{node}/lxc'): info} for every method Proxmox declares."""
    text = (reference_dir() / "pve-apidoc.js").read_text()
    start = text.index("[")
    end = text.rindex("]") + 1
    tree = json.loads(text[start:end])
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def walk(nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            for method, info in (node.get("info") or {}).items():
                out[(method, node["path"])] = info
            walk(node.get("children") or [])

    walk(tree)
    return out


def parameters(method: str, path: str) -> dict[str, dict[str, Any]]:
    """Proxmox's declared parameters of one method (empty when it declares none)."""
    info = methods()[(method, path)]
    return dict((info.get("parameters") or {}).get("properties") or {})
