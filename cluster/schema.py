"""Parameters declared once: validation, coercion, property strings, JSON schema.

API endpoints, guest config keys and storage options are all declared with
`Param`; the same declaration validates input (collecting one reason per bad
parameter, as Proxmox answers), renders the OpenAPI document and the CLI's
`usage`. Proxmox "property strings" (`virtio=AA:..,bridge=vmbr0`) are
parsed and printed by `PropertyFormat`.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.cluster.errors import ParamError

UNKNOWN_PROPERTY = (
    "property is not defined in schema and the schema does not allow additional properties"
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One declared parameter. `type` is string|integer|number|boolean."""

    type: str = "string"
    description: str = ""
    optional: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    format: str | PropertyFormat | None = None
    max_length: int | None = None
    # Changing this key needs a restart of the guest (pending until then).
    hotplug: bool = True
    # Never echoed back in config reads (passwords).
    secret: bool = False
    # Proxmox defines it and corral gives it no effect: `ignore` says why. Values in
    # `noop` (any value when None) are accepted and dropped, and the task log says so;
    # other values would need what corral does not have, so they are refused with
    # the reason (a client asking for passthrough must not believe it got it).
    ignore: str | None = None
    noop: tuple[Any, ...] | None = None

    def coerce(self, name: str, value: Any) -> Any:
        """Return the value converted to its declared type or raise ValueError(reason)."""
        if self.type == "boolean":
            if isinstance(value, bool):
                return 1 if value else 0
            if isinstance(value, int) and value in (0, 1):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return 1
            if text in _FALSE:
                return 0
            raise ValueError(f"type check ('boolean') failed - got '{value}'")
        if self.type == "integer":
            if isinstance(value, bool):
                raise ValueError(f"type check ('integer') failed - got '{value}'")
            if isinstance(value, int):
                out: Any = value
            else:
                text = str(value).strip()
                if not re.fullmatch(r"[+-]?\d+", text):
                    raise ValueError(f"type check ('integer') failed - got '{value}'")
                out = int(text)
            self._check_range(out)
            return out
        if self.type == "number":
            try:
                out = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"type check ('number') failed - got '{value}'") from None
            if out != out or out in (float("inf"), float("-inf")):
                raise ValueError(f"type check ('number') failed - got '{value}'")
            self._check_range(out)
            return out
        if isinstance(value, (dict, list)):
            raise ValueError("type check ('string') failed - got a structure")
        if isinstance(value, (bool, int, float)):
            # Only a JSON body holds non-strings: a number or boolean is not a string.
            raise ValueError(f"type check ('string') failed - got '{value}'")
        text = str(value)
        if "\0" in text or "\n" in text and not self.format == "multiline":
            raise ValueError("value must not contain NUL or newline characters")
        if self.max_length is not None and len(text) > self.max_length:
            raise ValueError(f"value may only be {self.max_length} characters long")
        if self.enum is not None and text not in self.enum:
            raise ValueError(
                f"value '{text}' does not have a value in the enumeration '{', '.join(self.enum)}'"
            )
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise ValueError("value does not match the regex pattern")
        if isinstance(self.format, PropertyFormat):
            self.format.parse(text)  # raises ValueError naming the bad sub-key
        elif isinstance(self.format, str) and self.format in FORMATS:
            FORMATS[self.format](text)
        return text

    def _check_range(self, value: float) -> None:
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"value must have a minimum value of {_num(self.minimum)}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"value must have a maximum value of {_num(self.maximum)}")

    def json_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "boolean":
            # As Proxmox, booleans also take 0 and 1.
            out = {"anyOf": [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}]}
        if self.description:
            out["description"] = self.description
        if self.ignore:
            out["description"] = f"{self.description} (no effect in corral: {self.ignore})".strip()
        if self.default is not None:
            out["default"] = self.default
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.enum is not None:
            out["enum"] = list(self.enum)
        if self.pattern is not None:
            # JSON Schema patterns search; corral's match whole values.
            out["pattern"] = f"^(?:{self.pattern})$"
        elif isinstance(self.format, str) and self.format in FORMAT_PATTERNS:
            # The named format as a pattern, so clients can generate valid values.
            out["pattern"] = FORMAT_PATTERNS[self.format]
        if self.max_length is not None:
            out["maxLength"] = self.max_length
        if isinstance(self.format, PropertyFormat):
            out["format"] = self.format.describe()
        elif self.format:
            out["format"] = self.format
        return out


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class PropertyFormat:
    """A Proxmox property string: `key=value,key=value`, one key may stand alone.

    `default_key` takes a value given without a key (`local:8` for rootfs).
    `keyed_enum` = (enum_key, value_key, names): a key from `names` means
    `enum_key=<key>` and `value_key=<value>` (`virtio=AA:BB:..` for NICs).
    """

    props: Mapping[str, Param]
    default_key: str | None = None
    keyed_enum: tuple[str, str, frozenset[str]] | None = None

    def parse(self, text: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not text:
            raise ValueError("empty property string")
        for part in text.split(","):
            if not part:
                raise ValueError("empty element in property string")
            if "=" in part:
                key, _, value = part.partition("=")
            elif self.keyed_enum and part in self.keyed_enum[2]:
                key, value = part, ""  # `virtio` alone: the MAC is generated
            elif self.default_key is not None and self.default_key not in out:
                key, value = self.default_key, part
            else:
                raise ValueError(
                    f"value without key, but schema does not define a default key: '{part}'"
                )
            if self.keyed_enum and key in self.keyed_enum[2]:
                enum_key, value_key, _ = self.keyed_enum
                if enum_key in out:
                    raise ValueError(f"duplicate key in comma-separated list property: {enum_key}")
                out[enum_key] = key
                if value:
                    out[value_key] = self._coerce(value_key, value)
                continue
            if key not in self.props:
                raise ValueError(f"invalid format - unknown key '{key}'")
            if key in out:
                raise ValueError(f"duplicate key in comma-separated list property: {key}")
            out[key] = self._coerce(key, value)
        for key, param in self.props.items():
            if not param.optional and key not in out:
                raise ValueError(f"invalid format - missing key '{key}'")
        return out

    def _coerce(self, key: str, value: str) -> Any:
        try:
            return self.props[key].coerce(key, value)
        except ValueError as err:
            raise ValueError(f"invalid format - {key}: {err}") from None

    def print(self, values: Mapping[str, Any]) -> str:
        """Render back to text, default key first and unkeyed, others in declaration order."""
        parts: list[str] = []
        rest = dict(values)
        if self.keyed_enum and self.keyed_enum[0] in rest:
            enum_key, value_key, _ = self.keyed_enum
            name = rest.pop(enum_key)
            mac = rest.pop(value_key, None)
            parts.append(f"{name}={mac}" if mac else f"{name}")
        if self.default_key and self.default_key in rest:
            parts.append(str(rest.pop(self.default_key)))
        for key in self.props:
            if key in rest and rest[key] is not None:
                parts.append(f"{key}={rest.pop(key)}")
        for key, value in rest.items():
            parts.append(f"{key}={value}")
        return ",".join(parts)

    def describe(self) -> str:
        keys = list(self.props)
        if self.keyed_enum:
            keys = ["|".join(sorted(self.keyed_enum[2])) + "=<value>"] + keys
        return ",".join(keys)


@dataclass
class Schema:
    """A set of declared parameters, as one endpoint's or one config's."""

    props: dict[str, Param] = field(default_factory=dict)
    additional: bool = False

    def __or__(self, other: Schema) -> Schema:
        return Schema({**self.props, **other.props}, self.additional or other.additional)

    def validate(
        self, raw: Mapping[str, Any], *, partial: bool = False, ignore: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Coerce and check `raw`; raise ParamError with every bad parameter at once."""
        errors: dict[str, str] = {}
        out: dict[str, Any] = {}
        skip = set(ignore)
        for name, value in raw.items():
            if name in skip:
                continue
            param = self.props.get(name)
            if param is None:
                if self.additional:
                    out[name] = value
                else:
                    errors[name] = UNKNOWN_PROPERTY
                continue
            try:
                coerced = param.coerce(name, value)
            except ValueError as err:
                errors[name] = str(err)
                continue
            if param.ignore is None:
                out[name] = coerced
            elif param.noop is not None and coerced not in param.noop:
                errors[name] = f"value '{value}' is not supported by corral: {param.ignore}"
            else:
                _note_ignored(name, value, param.ignore)
        if not partial:
            for name, param in self.props.items():
                if name not in raw and not param.optional and name not in skip:
                    errors[name] = "property is missing and it is not optional"
        if errors:
            raise ParamError(errors)
        return out

    def json_schema(self) -> dict[str, Any]:
        props = {name: p.json_schema() for name, p in self.props.items()}
        required = [name for name, p in self.props.items() if not p.optional]
        out: dict[str, Any] = {
            "type": "object",
            "properties": props,
            "additionalProperties": self.additional,
        }
        if required:
            out["required"] = required
        return out


def ignored(
    type: str, description: str, reason: str, *, noop: tuple[Any, ...] | None = None, **kw: Any
) -> Param:
    """A Proxmox parameter accepted without effect (values in `noop`, or any when None)."""
    return Param(type, description, optional=True, ignore=reason, noop=noop, **kw)


def unsupported(type: str, description: str, reason: str, **kw: Any) -> Param:
    """A Proxmox parameter corral cannot honour: declared, and refused with `reason`."""
    return Param(type, description, optional=True, ignore=reason, noop=(), **kw)


# Parameters dropped as no-ops during the current request (one API request runs in
# one thread), so the task it starts can say so in its log.
_seen = threading.local()


def _note_ignored(name: str, value: Any, reason: str) -> None:
    notes = getattr(_seen, "notes", None)
    if notes is not None:
        notes[name] = f"{name}={value}: {reason}"


def track_ignored() -> None:
    """Start collecting ignored parameters for this thread's request."""
    _seen.notes = {}


def ignored_notes() -> list[str]:
    """Task-log lines for the parameters ignored since track_ignored()."""
    notes = getattr(_seen, "notes", None) or {}
    return [
        f"note: parameter {text} (accepted for Proxmox compatibility)" for text in notes.values()
    ]


def indexed(prefix: str, count: int, param: Param) -> dict[str, Param]:
    """`net0..net{count-1}` style keys, all declared by one Param."""
    return {f"{prefix}{i}": param for i in range(count)}


# Named formats. Each raises ValueError with the reason.


def _pve_vmid(text: str) -> None:
    if not re.fullmatch(r"[1-9]\d{2,8}", text) or not 100 <= int(text) <= 999999999:
        raise ValueError("invalid vmid - must be an integer from 100 to 999999999")


def _node_name(text: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", text):
        raise ValueError(f"value '{text}' does not look like a valid node name")


def _storage_id(text: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9\-_.]*[a-z0-9]", text, re.I):
        raise ValueError(f"storage ID '{text}' contains illegal characters")


def _mac(text: str) -> None:
    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", text):
        raise ValueError(f"value '{text}' does not look like a valid MAC address")
    if int(text[:2], 16) & 1:
        raise ValueError("MAC address is a multicast address")


def _ipv4(text: str) -> None:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise ValueError(f"value '{text}' does not look like a valid IPv4 address") from None


def _ip(text: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"value '{text}' does not look like a valid IP address") from None


def _cidr(text: str) -> None:
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError(f"value '{text}' does not look like a valid CIDR network") from None
    if "/" not in text:
        raise ValueError(f"value '{text}' does not look like a valid CIDR network")


def _dns_name(text: str) -> None:
    if not re.fullmatch(
        r"(?=.{1,253}$)[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
        r"(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*",
        text,
    ):
        raise ValueError(f"value '{text}' does not look like a valid DNS name")


def _userid(text: str) -> None:
    if not re.fullmatch(r"[^\s:/@]{1,60}@[A-Za-z][A-Za-z0-9\.\-_]{1,31}", text):
        raise ValueError(f"value '{text}' does not look like a valid user name")


def _tokenid(text: str) -> None:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9\.\-_]{0,63}", text):
        raise ValueError(f"value '{text}' does not look like a valid token name")


def _volume_id(text: str) -> None:
    storage, sep, name = text.partition(":")
    if not sep or not name:
        raise ValueError(f"unable to parse volume ID '{text}'")
    _storage_id(storage)
    if ".." in name.split("/") or name.startswith("/") or name.startswith("-"):
        raise ValueError(f"invalid volume name '{name}'")


def _tag_list(text: str) -> None:
    for tag in re.split(r"[;, ]+", text.strip()):
        if tag and not re.fullmatch(r"[a-z0-9_][a-z0-9_\-+.]*", tag, re.I):
            raise ValueError(f"invalid tag '{tag}'")


def _configid_list(text: str) -> None:
    for key in re.split(r"[,;\s]+", text.strip()):
        if key and not re.fullmatch(r"[a-z][a-z0-9_]+", key, re.I):
            raise ValueError(f"invalid configuration ID '{key}'")


def _configid(text: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]+", text, re.I):
        raise ValueError(f"invalid configuration ID '{text}'")


def _ipv6(text: str) -> None:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        raise ValueError(f"value '{text}' does not look like a valid IPv6 address") from None


def _ip_list(text: str) -> None:
    for item in re.split(r"[,; ]+", text.strip()):
        if item:
            _ip(item)


def _dns_list(text: str) -> None:
    for item in re.split(r"[,; ]+", text.strip()):
        if item:
            _dns_name(item)


def _startup(text: str) -> None:
    """Proxmox's `startup`: `[order=]N[,up=N][,down=N]` (containers and VMs alike)."""
    for part in text.split(","):
        if not re.fullmatch(r"(order=)?\d+|up=\d+|down=\d+", part):
            raise ValueError(f"invalid startup order element '{part}'")


FORMATS: dict[str, Callable[[str], None]] = {
    "pve-vmid": _pve_vmid,
    "pve-node": _node_name,
    "pve-storage-id": _storage_id,
    "mac-addr": _mac,
    "ipv4": _ipv4,
    "ip": _ip,
    "CIDR": _cidr,
    "dns-name": _dns_name,
    "pve-userid": _userid,
    "pve-tokenid": _tokenid,
    "pve-volume-id": _volume_id,
    "pve-tag-list": _tag_list,
    "pve-configid-list": _configid_list,
    "pve-configid": _configid,
    "ipv6": _ipv6,
    "corral-ip-list": _ip_list,
    "corral-dns-list": _dns_list,
    "pve-startup-order": _startup,
}

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"({_OCTET}\.){{3}}{_OCTET}"
_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_DNS = rf"{_LABEL}(\.{_LABEL}){{0,3}}"
_STORAGE = r"[a-zA-Z][a-zA-Z0-9_.\-]{0,30}[a-zA-Z0-9]"
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,40}"
# Each named format as a (JSON Schema, anchored) pattern whose every match the format's
# validator accepts: the OpenAPI document uses it so clients can generate valid values.
FORMAT_PATTERNS: dict[str, str] = {
    "pve-vmid": r"^[1-9][0-9]{2,8}$",
    "pve-node": rf"^{_LABEL}$",
    "pve-storage-id": rf"^{_STORAGE}$",
    "mac-addr": r"^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$",
    "ip": rf"^{_IPV4}$",
    "CIDR": rf"^{_IPV4}/(3[0-2]|[12]?[0-9])$",
    "dns-name": rf"^{_DNS}$",
    "pve-userid": r"^[A-Za-z0-9_.\-]{1,60}@[A-Za-z][A-Za-z0-9._\-]{1,31}$",
    "pve-tokenid": r"^[A-Za-z][A-Za-z0-9._\-]{0,63}$",
    "pve-volume-id": rf"^{_STORAGE}:{_SEGMENT}(/{_SEGMENT}){{0,3}}$",
    "pve-tag-list": r"^[a-z0-9_][a-z0-9_+.\-]*([;, ][a-z0-9_][a-z0-9_+.\-]*)*$",
    "pve-configid-list": r"^[a-zA-Z][a-zA-Z0-9_]+([,; ][a-zA-Z][a-zA-Z0-9_]+)*$",
    "pve-configid": r"^[a-zA-Z][a-zA-Z0-9_]{1,39}$",
    "corral-ip-list": rf"^{_IPV4}([,; ]{_IPV4})*$",
    "corral-dns-list": rf"^{_DNS}([,; ]{_DNS})*$",
    "pve-startup-order": r"^(order=)?[0-9]+(,up=[0-9]+)?(,down=[0-9]+)?$",
}

# Shared declarations reused by many endpoints.
NODE = Param("string", "The cluster node name.", format="pve-node")
VMID = Param("integer", "The (unique) ID of the VM.", minimum=100, maximum=999999999)
STORAGE_ID = Param("string", "The storage identifier.", format="pve-storage-id")
DIGEST = Param(
    "string",
    "Prevent changes if current configuration file has a different "
    "SHA1 digest. This can be used to prevent concurrent modifications.",
    optional=True,
    max_length=64,
    pattern=r"[a-fA-F0-9]{1,64}",
)
SIZE = Param(
    "string", "Size, optionally with a unit: K, M, G, T.", pattern=r"\+?\d+(\.\d+)?[KMGT]?"
)


# A volume size in a guest's disk or mount point options (`size=8G`).
SIZE_PATTERN = r"\d+(\.\d+)?[KMGT]?"

# A guest NIC's VLAN tag and rate limit, the same for VMs (netN) and containers (netN).
NIC_TAG = Param("integer", "VLAN tag.", optional=True, minimum=1, maximum=4094)
NIC_RATE = Param("number", "Rate limit in MB/s.", optional=True, minimum=0)


def cidr_or(version: int, *keywords: str) -> Callable[[str], None]:
    """A validator for an interface address of IP `version` with its prefix
    (`10.0.0.5/24`), or one of `keywords` (`dhcp`, `auto`, `manual`): the
    ip=/ip6= of containers' nets and VMs' cloud-init ipconfigs."""
    iface = ipaddress.IPv4Interface if version == 4 else ipaddress.IPv6Interface
    words = ", ".join(f"'{k}'" for k in keywords)

    def check(text: str) -> None:
        if text in keywords:
            return
        try:
            iface(text)
        except ValueError:
            raise ValueError(f"value '{text}' is not an IPv{version} CIDR or {words}") from None
        if "/" not in text:
            raise ValueError(f"value '{text}' is not an IPv{version} CIDR or {words}")

    return check


def new_volume_size(volume: str) -> int | None:
    """Bytes to allocate for `STORAGE:SIZE_IN_GiB` (a volume still to make), None
    for anything else (an existing volume ID, `none`, `cdrom`)."""
    _, sep, name = volume.partition(":")
    if sep and re.fullmatch(r"\d+(\.\d+)?", name):
        return parse_size(name, default_unit="G")
    return None


def check_volume_or_new(text: str) -> None:
    """`STORAGE:VOLNAME` or `STORAGE:SIZE_IN_GiB` (allocated at creation)."""
    storage, _, name = text.partition(":")
    if new_volume_size(text) is not None:
        FORMATS["pve-storage-id"](storage)
        return
    FORMATS["pve-volume-id"](text)


def parse_size(text: str, *, default_unit: str = "G") -> int:
    """'8G' -> bytes. A bare number takes `default_unit` (Proxmox sizes are in GiB)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip())
    if not match:
        raise ValueError(f"unable to parse size '{text}'")
    unit = match.group(2) or default_unit
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    return int(float(match.group(1)) * factor)


def format_size(size: int) -> str:
    """Bytes -> the shortest exact Proxmox size text ('8G', '512M')."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
