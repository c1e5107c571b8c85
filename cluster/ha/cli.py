"""`corral ha ...` and `corral node maintenance ...`: ha-manager's commands as a
thin table over the API (through the node's root-only unix socket)."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from corral.cluster.client import ApiError, Client


def add_parsers(sub: Any) -> None:
    ha = sub.add_parser("ha", help="high availability (like ha-manager)")
    ha.add_argument("action", choices=["status", "add", "remove", "set", "migrate", "relocate"])
    ha.add_argument("sid", nargs="?", default="", help="vm:ID or ct:ID")
    ha.add_argument("node", nargs="?", default="", help="target node (migrate, relocate)")
    ha.add_argument("--state", default=None)
    ha.add_argument("--max_restart", "--max-restart", dest="max_restart", default=None)
    ha.add_argument("--max_relocate", "--max-relocate", dest="max_relocate", default=None)
    ha.add_argument("--failback", default=None)
    ha.add_argument("--comment", default=None)
    ha.add_argument("--verbose", action="store_true", help="status: the full manager status")
    node = sub.add_parser("node", help="node settings")
    node.add_argument("what", choices=["maintenance"])
    node.add_argument("action", choices=["enable", "disable"])
    node.add_argument("node", nargs="?", default=None, help="default: this node")


def _opts(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("state", "max_restart", "max_relocate", "failback", "comment")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def run(client: Client, args: argparse.Namespace, out: Any = sys.stdout) -> int:
    try:
        return _run(client, args, out)
    except ApiError as err:
        detail = "".join(f"\n  {k}: {v}" for k, v in err.errors.items())
        print(f"corral: {err.message}{detail}", file=sys.stderr)
        return 1


def _run(client: Client, args: argparse.Namespace, out: Any) -> int:
    if args.cmd == "node":
        node = args.node or socket.gethostname()
        enable = int(args.action == "enable")
        client.call("POST", "/cluster/ha/status/node-maintenance", {"node": node, "enable": enable})
        print(f"maintenance of node '{node}' {args.action}d (requested)", file=out)
        return 0
    if args.action == "status":
        if args.verbose:
            import json

            doc = client.call("GET", "/cluster/ha/status/manager_status")
            print(json.dumps(doc, indent=2, sort_keys=True), file=out)
        for row in client.call("GET", "/cluster/ha/status/current"):
            print(f"{row['type']} {row['status']}", file=out)
        return 0
    if not args.sid:
        print(f"corral ha {args.action}: a resource ID (vm:ID or ct:ID) is needed", file=sys.stderr)
        return 2
    path = f"/cluster/ha/resources/{args.sid}"
    if args.action == "add":
        client.call("POST", "/cluster/ha/resources", {"sid": args.sid, **_opts(args)})
    elif args.action == "remove":
        client.call("DELETE", path)
    elif args.action == "set":
        client.call("PUT", path, _opts(args))
    else:
        if not args.node:
            print(f"corral ha {args.action}: a target node is needed", file=sys.stderr)
            return 2
        client.call("POST", f"{path}/{args.action}", {"node": args.node})
    return 0
