"""`POST /nodes/{node}/storage/{storage}/download-url`: fetch an ISO image or a
container template from a URL into a storage, as a `download` task with progress
(the transfer itself: corral.storage.download)."""

from __future__ import annotations

import os

from corral.cluster.errors import Conflict, Forbidden, ParamError
from corral.cluster.schema import NODE, STORAGE_ID, Param
from corral.storage.download import CHECKSUMS, check_url
from corral.storage.volid import parse_path_volname
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node


def _perm(ctx: Ctx, node: str, storage: str, **_: object) -> None:
    # As Proxmox: allocation on the storage, and, since a download probes the node's
    # network, Sys.Audit+Sys.Modify on / or Sys.AccessNetwork on the node.
    ctx.check(f"/storage/{storage}", ["Datastore.AllocateTemplate"])
    if not (ctx.can("/", ["Sys.Audit", "Sys.Modify"])
            or ctx.can(f"/nodes/{node}", ["Sys.AccessNetwork"])):  # fmt: skip
        raise Forbidden("Permission check failed (Sys.Modify on / or Sys.AccessNetwork)")


@endpoint(
    "POST",
    "/nodes/{node}/storage/{storage}/download-url",
    params={
        "node": NODE,
        "storage": STORAGE_ID,
        "url": Param("string", "The URL to download the file from.", pattern=r"https?://.*"),
        "filename": Param("string", "The name of the file to create.", max_length=255),
        "content": Param("string", "Content type.", enum=("iso", "vztmpl", "import")),
        "checksum": Param(
            "string", "The expected checksum of the file.", optional=True, max_length=256
        ),
        "checksum-algorithm": Param(
            "string",
            "The algorithm to calculate the checksum of the file.",
            optional=True,
            enum=CHECKSUMS,
        ),
        "verify-certificates": Param(
            "boolean",
            "If false, no SSL/TLS certificates will be verified.",
            optional=True,
            default=1,
        ),
        "compression": Param(
            "string",
            "Decompress the downloaded file (not supported by "
            "corral: download the uncompressed file).",
            optional=True,
            max_length=16,
        ),
    },  # fmt: skip
    perm=_perm,
    description="Download templates, ISO images from a URL (a task with progress).",
    local=True,
    returns={"type": "string"},
)
def download_url(
    ctx: Ctx,
    node: str,
    storage: str,
    url: str,
    filename: str,
    content: str,
    checksum: str | None = None,
    compression: str | None = None,
    **extra: object,  # checksum-algorithm, verify-certificates (not Python names)
) -> str:
    require_node(ctx, node)
    check_url(url)
    algorithm = extra.get("checksum-algorithm")
    if compression:
        raise ParamError.one("compression", "corral does not decompress downloads")
    if content == "import":
        raise ParamError.one("content", "corral downloads only 'iso' and 'vztmpl'")
    if bool(checksum) != bool(algorithm):
        name = "checksum" if algorithm else "checksum-algorithm"
        raise ParamError.one(name, "checksum and checksum-algorithm go together")
    if os.path.basename(filename) != filename or filename.startswith("."):
        raise ParamError.one("filename", "a plain file name, without a path")
    vol = parse_path_volname(f"{content}/{filename}", param="filename")
    volumes = ctx.services.get("volumes")
    if volumes is None:
        raise ParamError.one("storage", f"no storage on node '{node}'")
    plugin, cfg = volumes.resolve(storage)
    if content not in plugin.enabled_content(cfg):
        raise ParamError.one("content", f"storage '{storage}' does not support {content}")
    dest = plugin.file_path(cfg, volname=f"{content}/{vol.name}")
    if os.path.exists(dest):
        raise Conflict(f"volume '{storage}:{content}/{vol.name}' already exists")
    args = {
        "url": url,
        "dest": dest,
        # Staged beside the content folders, so the final move is a rename.
        "staging": os.path.dirname(os.path.dirname(plugin.file_path(cfg, volname="iso/x.iso"))),
        "verify": bool(extra.get("verify-certificates", True)),
        "checksum-algorithm": algorithm,
        "checksum": checksum,
    }
    return ctx.submit(node=node, type="download", id=storage, args=args)
