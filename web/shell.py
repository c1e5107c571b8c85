"""corralsh: the API from the shell, like pvesh.

    corralsh get /nodes
    corralsh create /nodes/node1/lxc --vmid 101 --ostemplate local:vztmpl/busybox.tar.gz
    corralsh set /nodes/node1/lxc/101/config --memory 256
    corralsh ls /nodes/node1
    corralsh usage /nodes/{node}/lxc --verbose

On a node, as root, it talks to the local corrald through its root-only unix
socket (as pvesh does, no login). `--host` reaches any node over HTTPS with
an API token (`--token USER@REALM!ID=SECRET` or $CORRAL_TOKEN) or a login
(`--user`, password from $CORRAL_PASSWORD or a prompt). A call that starts a
task follows it, printing its log, and fails when the task fails.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from corral.cluster.client import ApiError, Client

METHODS = {"get": "GET", "ls": "GET", "create": "POST", "set": "PUT", "delete": "DELETE"}


def parse_params(items: list[str]) -> dict[str, Any]:
    """`--key value`, `-key value`, `--key=value` as pvesh takes them."""
    params: dict[str, Any] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("-"):
            raise SystemExit(f"corralsh: unexpected argument '{item}' (use --name value)")
        key = item.lstrip("-")
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(items) and not (items[i + 1].startswith("--")):
            i += 1
            value = items[i]
        else:
            value = "1"
        params[key] = value
        i += 1
    return params


@dataclass(frozen=True)
class TextStyle:
    """pvesh's text-mode options: --noborder, --noheader, --human-readable."""

    border: bool = True
    header: bool = True
    human: bool = False


def render(data: Any, fmt: str, style: TextStyle = TextStyle()) -> str:
    if fmt == "json":
        return json.dumps(data, separators=(",", ":"), sort_keys=True)
    if fmt == "json-pretty":
        return json.dumps(data, indent=4, sort_keys=True)
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=True, default_flow_style=False)).rstrip()
    return render_text(data, style)


def render_text(data: Any, style: TextStyle = TextStyle()) -> str:
    if data is None:
        return ""
    if isinstance(data, list):
        if data and all(isinstance(r, dict) for r in data):
            cols: list[str] = []
            for row in data:
                for key in row:
                    if key not in cols:
                        cols.append(key)
            cells = [[_cell(row.get(c), c, style) for c in cols] for row in data]
            rows = ([cols] if style.header else []) + cells
            widths = [max(len(r[i]) for r in rows) if rows else 0 for i in range(len(cols))]
            if not style.border:
                return "\n".join(
                    " ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                    for r in rows
                )
            line = "+".join("-" * (w + 2) for w in widths)

            def framed(r: list[str]) -> str:
                return "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |"

            out = [f"+{line}+"]
            if style.header:
                out += [framed(cols), f"+{line}+"]
            out += [framed(r) for r in cells]
            out.append(f"+{line}+")
            return "\n".join(out)
        return "\n".join(_cell(v, "", style) for v in data)
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        sep = " : " if style.border else " "
        return "\n".join(
            f"{k.ljust(width)}{sep}{_cell(v, k, style)}" for k, v in sorted(data.items())
        )
    return str(data)


# Fields pvesh renders with --human-readable (by Proxmox's return schemas' renderers).
BYTES = {"mem", "maxmem", "disk", "maxdisk", "swap", "maxswap", "netin", "netout",
         "diskread", "diskwrite", "size", "used", "avail", "total", "free"}  # fmt: skip
DURATIONS = {"uptime"}
TIMESTAMPS = {"starttime", "endtime", "ctime", "expire"}


def _human(value: Any, key: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if key in BYTES:
        size = float(value)
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(size) < 1024 or unit == "TiB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
            size /= 1024
    if key in DURATIONS:
        secs = int(value)
        days, rest = divmod(secs, 86400)
        hours, rest = divmod(rest, 3600)
        mins, secs = divmod(rest, 60)
        parts = [f"{days}d"] if days else []
        parts += [f"{hours}h"] if hours or days else []
        return " ".join([*parts, f"{mins}m", f"{secs}s"])
    if key in TIMESTAMPS and value > 0:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return None


def _cell(value: Any, key: str = "", style: TextStyle = TextStyle()) -> str:
    if style.human:
        text = _human(value, key)
        if text is not None:
            return text
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def usage(path: str, verbose: bool) -> str:
    from corral.web import api
    from corral.web.app import load_endpoint_modules

    load_endpoint_modules()
    clean = "/" + path.strip("/")
    lines = []
    for ep in api.ENDPOINTS:
        if ep.path == clean or ep.regex.match(clean):
            verb = {v: k for k, v in METHODS.items() if k != "ls"}[ep.method]
            params = dict(ep.params.props)
            if ep.body is not None:
                # The rest of the parameters (a guest's config keys, a storage's options).
                for name, p in ep.body().props.items():
                    params.setdefault(name, p)
            params = {n: p for n, p in params.items() if n not in ep.path_params}
            args = " ".join(
                f"--{n} <{p.type}>" if not p.optional else f"[--{n} <{p.type}>]"
                for n, p in params.items()
            )
            lines.append(f"USAGE: corralsh {verb} {ep.path} {args}".rstrip())
            if verbose:
                lines.append(f"  {ep.description}")
                for name, p in params.items():
                    lines.append(f"  --{name:<16} {p.description}")
    if not lines:
        raise SystemExit(f"corralsh: no API method at '{clean}'")
    return "\n".join(lines)


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got '{text}'")


def make_client(args: argparse.Namespace) -> Client:
    if args.host:
        token = args.token or os.environ.get("CORRAL_TOKEN")
        password = None
        if not token:
            password = os.environ.get("CORRAL_PASSWORD") or getpass.getpass(
                f"Password for {args.user}: "
            )
        return Client(
            host=args.host,
            port=args.port,
            token=token,
            user=args.user,
            password=password,
            verify=args.verify,
            cafile=args.cafile,
        )
    sock = os.path.join(args.data_dir, "corrald.sock")
    if os.geteuid() != 0:
        raise SystemExit("corralsh: local access needs root (or use --host with a token)")
    return Client(socket_path=sock)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="corralsh", description="corral API shell")
    parser.add_argument("command", choices=[*METHODS, "usage"])
    parser.add_argument("path")
    parser.add_argument(
        "--output-format", default="text", choices=["text", "json", "json-pretty", "yaml"]
    )
    parser.add_argument("--host", default=os.environ.get("CORRAL_HOST"))
    parser.add_argument("--port", type=int, default=8006)
    parser.add_argument("--user", default=os.environ.get("CORRAL_USER", "root@pam"))
    parser.add_argument("--token", default=None)
    parser.add_argument("--verify", action="store_true", help="verify the TLS certificate")
    parser.add_argument("--cafile", default=None)
    parser.add_argument("--data-dir", default=os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral"))
    parser.add_argument("--quiet", action="store_true", help="do not print task logs")
    parser.add_argument("--noproxy", action="store_true", help="accepted for pvesh compat")
    parser.add_argument("--verbose", action="store_true")
    # pvesh's formatting options take an optional boolean (`--noborder` or `--noborder 1`).
    for flag, default in (("noborder", "0"), ("noheader", "0"), ("human-readable", "0")):
        parser.add_argument(f"--{flag}", nargs="?", const="1", default=default, type=_flag)
    args, rest = parser.parse_known_args(argv)
    style = TextStyle(border=not args.noborder, header=not args.noheader, human=args.human_readable)
    if args.command == "usage":
        print(usage(args.path, args.verbose))
        return
    params = parse_params(rest)
    try:
        client = make_client(args)
        data = client.call(METHODS[args.command], args.path, params)
        if args.command == "ls" and isinstance(data, list):
            names = []
            for row in data:
                if isinstance(row, dict):
                    name = next(
                        (
                            str(row[k])
                            for k in (
                                "name",
                                "subdir",
                                "node",
                                "vmid",
                                "storage",
                                "volid",
                                "upid",
                                "userid",
                            )
                            if k in row
                        ),
                        json.dumps(row),
                    )
                    names.append(name)
            print("\n".join(names))
            return
        if isinstance(data, str) and data.startswith("UPID:") and args.command != "get":
            status = client.follow_task(data, quiet=args.quiet)
            if status.get("exitstatus") != "OK":
                print(f"corralsh: task failed: {status.get('exitstatus')}", file=sys.stderr)
                sys.exit(1)
            # As pvesh: the UPID is the answer (`UPID=$(corralsh create ...)`); the log
            # went to stderr.
            print(render(data, args.output_format, style))
            return
        text = render(data, args.output_format, style)
        if text:
            print(text)
    except ApiError as err:
        print(f"corralsh: {err.status or ''} {err.message}".replace("  ", " "), file=sys.stderr)
        for key, reason in sorted(err.errors.items()):
            print(f"  {key}: {reason}", file=sys.stderr)
        sys.exit(2 if err.status == 400 else 1)


if __name__ == "__main__":
    main()
