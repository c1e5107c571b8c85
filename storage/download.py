"""Downloading an ISO image or container template from a URL into a storage (the
`download` task behind `POST /nodes/{node}/storage/{storage}/download-url`).

The file is streamed into a staging file beside the content folders, hashed as it
arrives, checked against the expected checksum, then renamed into place: a failed,
aborted or mismatching download leaves nothing behind. Only http and https are
followed (redirects included: urllib would also follow ftp), with no proxy from the
environment (corral has no proxy setting; a datacenter's proxy variables must not
send a node's downloads elsewhere unasked), and every read has a timeout.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from corral.cluster.errors import Conflict, CorralError, ParamError
from corral.cluster.tasks import TaskContext, task_handler
from corral.cluster.undo import Reverter

TIMEOUT = 30.0  # seconds without a byte before the download fails
CHUNK = 1 << 20
CHECKSUMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


def check_url(url: str) -> str:
    """The URL if corral will fetch it; ParamError naming `url` otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise ParamError.one("url", f"not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise ParamError.one("url", "only http:// and https:// URLs can be downloaded")
    if not parts.hostname:
        raise ParamError.one("url", "the URL names no host")
    return url


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:  # fmt: skip
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise CorralError(f"refused a redirect to '{newurl}': only http and https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(verify: bool) -> urllib.request.OpenerDirector:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _HttpOnlyRedirects(),
        urllib.request.HTTPSHandler(context=context),
    )


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


@task_handler("download")
def _download(ctx: TaskContext, args: dict[str, Any]) -> None:
    url, dest, staging = args["url"], args["dest"], args["staging"]
    algorithm, expected = args.get("checksum-algorithm"), args.get("checksum")
    check_url(url)
    ctx.log(f"downloading {url} to {dest}")
    if os.path.exists(dest):
        raise Conflict(f"{os.path.basename(dest)} already exists")
    digest = hashlib.new(algorithm) if algorithm else None
    tmp = os.path.join(staging, f".download-{os.getpid()}-{os.path.basename(dest)}.tmp")
    with Reverter() as undo:
        os.makedirs(staging, exist_ok=True)
        undo.add(lambda: _remove(tmp))
        try:
            resp = _opener(bool(args.get("verify", True))).open(url, timeout=TIMEOUT)
        except urllib.error.HTTPError as err:
            raise CorralError(f"download failed: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise CorralError(f"download failed: {reason}") from None
        with resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            ctx.log(f"size: {total} bytes" if total else "size: unknown")
            done = 0
            while True:
                ctx.check_abort()
                try:
                    data = resp.read(CHUNK)
                except OSError as err:  # a timeout or a reset mid-way
                    raise CorralError(f"download failed after {done} bytes: {err}") from None
                if not data:
                    break
                out.write(data)
                if digest is not None:
                    digest.update(data)
                done += len(data)
                if total:
                    ctx.progress(done / total)
            out.flush()
            os.fsync(out.fileno())
        if total and done != total:
            raise CorralError(f"download incomplete: {done} of {total} bytes")
        ctx.log(f"downloaded {done} bytes")
        if digest is not None:
            got = digest.hexdigest()
            if got.lower() != str(expected).strip().lower():
                raise CorralError(f"checksum mismatch: got '{got}' != expected '{expected}'")
            ctx.log(f"{algorithm} checksum verified: {got}")
        if os.path.exists(dest):
            raise Conflict(f"{os.path.basename(dest)} already exists")
        os.rename(tmp, dest)
        undo.success()
    ctx.log(f"saved as {os.path.basename(dest)}")
