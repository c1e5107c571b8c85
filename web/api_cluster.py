"""Cluster membership: create, join (server side), node list, delnode.

Joining (`corral cluster join`) runs on the new node: it authenticates to an
existing member (pinning that member's certificate fingerprint), which adds
the new etcd member and hands back what the new node needs — the etcd member
list, the cluster CA and the cluster name. Up to five nodes get a voting
etcd member each; further nodes use the ensemble as clients.
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any

from corral.cluster import keys
from corral.cluster.errors import Conflict, NotFound, ParamError, Unavailable
from corral.cluster.schema import NODE, Param
from corral.web.api import Ctx, endpoint

MAX_VOTERS = 5


def _daemon(ctx: Ctx) -> Any:
    daemon = ctx.services.get("daemon")
    if daemon is None:
        raise Unavailable("cluster membership is managed by corrald")
    return daemon


@endpoint(
    "POST",
    "/cluster/config",
    perm=("/", ["Sys.Modify"]),
    params={
        "clustername": Param(
            "string", "The name of the cluster.", max_length=15, pattern=r"[A-Za-z0-9\-]+"
        ),
        "link0": Param(
            "string",
            "Address other nodes reach this node at (default: the node's listen address).",
            optional=True,
            format="ip",
        ),
    },
    description="Create a cluster from this node: name it and make its etcd reachable by "
    "joining nodes.",
)
def create_cluster(ctx: Ctx, clustername: str, link0: str | None = None) -> str:
    daemon = _daemon(ctx)
    if len(ctx.store.range(keys.NODE_INFO)) > 1:
        raise Conflict("this node is already part of a cluster with other nodes")
    address = link0 or _node_address(ctx)
    if address in ("127.0.0.1", "0.0.0.0", ""):
        raise ParamError.one(
            "link0", "the node listens on loopback only; give the address other nodes reach it at"
        )
    ctx.store.update(keys.CLUSTER, lambda c: {**(c or {}), "name": clustername})
    if daemon.etcd is not None:
        daemon.move_etcd(address)
    return clustername


def _node_address(ctx: Ctx) -> str:
    info = ctx.store.get_value(keys.node_info(ctx.node)) or {}
    return str(info.get("address", ""))


@endpoint(
    "GET",
    "/cluster/config/nodes",
    perm=("/", ["Sys.Audit"]),
    description="Corosync node list (here: the etcd members and clients).",
)
def config_nodes(ctx: Ctx) -> list[dict[str, Any]]:
    members = {m.name: m for m in ctx.store.members()}
    out = []
    for kv in ctx.store.range(keys.NODE_INFO):
        info = kv.value
        name = info["node"]
        member = members.get(name)
        out.append(
            {
                "node": name,
                "name": name,
                "nodeid": info.get("nodeid"),
                "ring0_addr": info.get("address"),
                "quorum_votes": 1 if member else 0,
                "etcd_peer": list(member.peer_urls) if member else [],
            }
        )
    return out


@endpoint(
    "GET",
    "/cluster/config/join",
    perm=("/", ["Sys.Audit"]),
    description="Get information needed to join this cluster over the connected node.",
)
def join_info(ctx: Ctx) -> dict[str, Any]:
    cluster = ctx.store.get_value(keys.CLUSTER) or {}
    nodes = [kv.value for kv in ctx.store.range(keys.NODE_INFO)]
    me: dict[str, Any] = next((n for n in nodes if n["node"] == ctx.node), {})
    return {
        "config_digest": "",
        "preferred_node": ctx.node,
        "totem": {},
        "cluster_name": cluster.get("name"),
        "nodelist": [
            {
                "name": n["node"],
                "nodeid": n.get("nodeid"),
                "pve_addr": n.get("address"),
                "pve_fp": n.get("fingerprint"),
            }
            for n in nodes
        ],
        "fingerprint": me.get("fingerprint"),
    }


@endpoint(
    "POST",
    "/cluster/config/nodes/{node}",
    perm=("/", ["Sys.Modify"]),
    params={
        "node": NODE,
        "address": Param("string", "The joining node's address.", format="ip"),
        "etcd_peer_port": Param(
            "integer", "Its etcd peer port.", optional=True, minimum=1, maximum=65535, default=2380
        ),
        "etcd_client_port": Param(
            "integer",
            "Its etcd client port.",
            optional=True,
            minimum=1,
            maximum=65535,
            default=2379,
        ),
    },
    description="Adds a node to the cluster configuration (called by the joining node).",
)
def add_node(
    ctx: Ctx, node: str, address: str, etcd_peer_port: int = 2380, etcd_client_port: int = 2379
) -> dict[str, Any]:
    if ctx.store.get(keys.node_info(node)) is not None:
        raise Conflict(f"node '{node}' already exists in the cluster")
    cluster = ctx.store.get_value(keys.CLUSTER) or {}
    members = ctx.store.members()
    for m in members:
        if any(re.match(r"https?://127\.", u) for u in m.peer_urls):
            raise Conflict(
                "this cluster's etcd listens on loopback only: run "
                "'corral cluster create NAME' on this node first"
            )
    ssl_dir = ctx.services.get("data_dir", ctx.data_dir) + "/ssl"
    with open(f"{ssl_dir}/ca.pem") as f:
        ca_cert = f.read()
    with open(f"{ssl_dir}/ca.key") as f:
        ca_key = f.read()
    peer = f"http://{address}:{etcd_peer_port}"
    voter = len(members) < MAX_VOTERS
    result: dict[str, Any] = {
        "cluster_name": cluster.get("name"),
        "ca_cert": ca_cert,
        "ca_key": ca_key,
        "voter": int(voter),
    }
    client_urls = sorted(
        {u for m in members for u in m.client_urls if not re.match(r"https?://127\.", u)}
    )
    if voter:
        # Last step: from here on quorum counts the new member, so nothing else
        # may be written before it starts.
        _add_member(ctx, peer)
        initial = [f"{m.name}={m.peer_urls[0]}" for m in members if m.name] + [f"{node}={peer}"]
        result["initial_cluster"] = ",".join(initial)
    result["endpoints"] = client_urls
    return result


@endpoint(
    "DELETE",
    "/cluster/config/nodes/{node}",
    perm=("/", ["Sys.Modify"]),
    params={"node": NODE},
    description="Removes a node from the cluster configuration.",
)
def del_node(ctx: Ctx, node: str) -> None:
    if node == ctx.node:
        raise ParamError.one("node", "cannot remove the node you are connected to")
    if ctx.store.get(keys.node_info(node)) is None:
        raise NotFound(f"no such node '{node}'")
    if ctx.store.get(keys.node_alive(node)) is not None:
        raise Conflict(f"node '{node}' is online: stop corrald on it first")
    guests_left = [
        kv.value["vmid"] for kv in ctx.store.range(keys.GUESTS) if kv.value.get("node") == node
    ]
    if guests_left:
        raise Conflict(f"node '{node}' still has guests: {guests_left[:10]}")
    for member_id in [int(m.id) for m in ctx.store.members() if m.name == node]:
        ctx.store.call(functools.partial(_remove_member, member_id=member_id))
    ctx.store.delete(keys.node_info(node))
    ctx.store.delete(keys.node_status(node))
    ctx.store.delete_prefix(keys.guest_status_prefix(node))


def _add_member(ctx: Ctx, peer: str, timeout: float = 20.0) -> None:
    """etcd refuses new members while it calls itself unhealthy (for a few seconds
    after its leader started, say); retry within a bound."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ctx.store.call(lambda c: c.add_member([peer]))
            return
        except Unavailable as err:
            if "unhealthy cluster" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def _remove_member(client: Any, *, member_id: int) -> None:
    await client.remove_member(member_id)
