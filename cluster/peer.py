"""Node-to-node calls, over the one API client (corral.cluster.client).

Two kinds: a node's own tasks calling another node (a migration's source
pushes volume streams to the target and asks it to clean up on failure), as
root@pam with a short-lived ticket signed with the cluster's key (every node
holds it); and the API forwarding a request to the node that owns a resource
(corral.web.proxy), with the caller's own credentials. Either way the other
node's certificate is verified against the cluster CA, every call has a
timeout, and a streamed body goes out chunked, so a volume never has to fit
in memory or on a scratch disk.
"""

from __future__ import annotations

from typing import IO, Any
from urllib.parse import urlencode, urlsplit

from corral.cluster import keys
from corral.cluster.access import Access
from corral.cluster.client import Answer, Client
from corral.cluster.errors import CorralError, NotFound, Unavailable
from corral.cluster.store_api import StoreAPI

CHUNK = 1 << 20


class PeerError(CorralError):
    """The other node answered with an error; carries its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def node_address(store: StoreAPI, target: str) -> tuple[str, int]:
    """Where an online node's API listens (host, port); NotFound/Unavailable if
    the node is unknown or offline."""
    info = store.get_value(keys.node_info(target))
    if info is None:
        raise NotFound(f"no such node '{target}'")
    if store.get(keys.node_alive(target)) is None:
        raise Unavailable(f"node '{target}' is offline")
    url = urlsplit(info.get("url") or f"https://{info['address']}:8006/")
    return url.hostname or info["address"], url.port or 8006


def client_for(
    store: StoreAPI,
    data_dir: str,
    target: str,
    *,
    timeout: float = 60.0,
    as_root: bool = False,
) -> Client:
    """A client for node `target` (NotFound/Unavailable if unknown/offline),
    verifying it with the cluster CA under `data_dir`; `as_root` signs in as
    root@pam with a ticket issued here."""
    host, port = node_address(store, target)
    ticket, csrf = Access(store).issue_ticket("root@pam") if as_root else (None, None)
    return Client(
        host=host,
        port=port,
        cafile=f"{data_dir}/ssl/ca.pem",
        timeout=timeout,
        ticket=ticket,
        csrf=csrf,
    )


def exchange(client: Client, target: str, method: str, path: str, **kw: Any) -> Answer:
    """client.exchange, with the node named when it does not answer."""
    try:
        return client.exchange(method, path, **kw)
    except Unavailable as err:
        raise Unavailable(
            f"node '{target}' did not answer: {err.kwargs.get('reason', err)}"
        ) from None


def call(
    store: StoreAPI,
    data_dir: str,
    target: str,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: IO[bytes] | None = None,
    timeout: float = 60.0,
) -> Any:
    """`method /api2/json{path}` on node `target` as root@pam; returns the answer's `data`.

    With `body`, params go in the query string and the body is streamed chunked."""
    client = client_for(store, data_dir, target, timeout=timeout, as_root=True)
    headers = {"Accept": "application/json", **client.auth_headers("POST")}
    query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
    target_path = "/api2/json" + path
    payload: Any = None
    if body is not None or method in ("GET", "DELETE"):
        if query:
            target_path += "?" + query
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Transfer-Encoding"] = "chunked"
            payload = iter(lambda: body.read(CHUNK), b"")
    else:
        payload = query
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    answer = exchange(client, target, method, target_path, headers=headers, body=payload,
                      chunked=body is not None)  # fmt: skip
    doc = answer.doc()
    if answer.status >= 400:
        message = doc.get("message") or answer.reason
        errors = doc.get("errors")
        if errors:
            message = f"{message} " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        raise PeerError(answer.status, f"node '{target}': {message.strip()}")
    return doc.get("data")
