"""The dependency rules ARCHITECTURE.md states, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_cluster_never_imports_web_kvm_or_lxc() -> None:
    bad = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "cluster").rglob("*.py"))
        for name in _imports(path)
        if name.startswith(("corral.web", "corral.kvm", "corral.lxc"))
    }
    assert not bad, sorted(bad)


# What only the guest service (corral.cluster.guest_service) may do with a guest.
GUEST_RULES = ("update_record", "check_lock", "TASK_TYPES", "keys.guest(", ".txn(", "submit(")


def test_guest_endpoints_hold_no_guest_rules() -> None:
    for name in ("api_guests.py", "api_migrate.py", "api_snapshots.py", "api_clones.py"):
        text = (ROOT / "web" / name).read_text()
        assert not [rule for rule in GUEST_RULES if rule in text], name
