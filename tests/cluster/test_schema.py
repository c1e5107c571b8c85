"""Declared parameters: coercion, reasons per parameter, property strings."""

from __future__ import annotations

import pytest

from corral.cluster.errors import ParamError
from corral.cluster.schema import (
    UNKNOWN_PROPERTY,
    Param,
    PropertyFormat,
    Schema,
    format_size,
    indexed,
    parse_size,
)

SCHEMA = Schema(
    {
        "vmid": Param("integer", minimum=100, maximum=999999999),
        "name": Param("string", optional=True, format="dns-name"),
        "onboot": Param("boolean", optional=True, default=0),
        "ratio": Param("number", optional=True, minimum=0, maximum=1),
        "mode": Param("string", optional=True, enum=("a", "b")),
        "mac": Param("string", optional=True, format="mac-addr"),
    }
)


def test_coerces_strings_from_forms() -> None:
    out = SCHEMA.validate({"vmid": "105", "onboot": "yes", "ratio": "0.5", "name": "web-1"})
    assert out == {"vmid": 105, "onboot": 1, "ratio": 0.5, "name": "web-1"}


def test_every_bad_parameter_is_named_with_its_reason() -> None:
    with pytest.raises(ParamError) as exc:
        SCHEMA.validate(
            {
                "vmid": "99",
                "onboot": "maybe",
                "mode": "c",
                "bogus": 1,
                "mac": "01:00:00:00:00:01",
                "ratio": "nan",
            }
        )
    errors = exc.value.errors
    assert errors["vmid"] == "value must have a minimum value of 100"
    assert "boolean" in errors["onboot"]
    assert "enumeration" in errors["mode"]
    assert errors["bogus"] == UNKNOWN_PROPERTY
    assert "multicast" in errors["mac"]
    assert "number" in errors["ratio"]
    assert exc.value.status == 400


def test_missing_required_and_partial() -> None:
    with pytest.raises(ParamError) as exc:
        SCHEMA.validate({})
    assert exc.value.errors == {"vmid": "property is missing and it is not optional"}
    assert SCHEMA.validate({}, partial=True) == {}


@pytest.mark.parametrize("value", ["1e3", "12abc", "", "1.5", True])
def test_integer_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        Param("integer").coerce("x", value)


def test_strings_reject_control_characters() -> None:
    with pytest.raises(ValueError):
        Param("string").coerce("x", "a\nb")
    with pytest.raises(ValueError):
        Param("string").coerce("x", "a\0b")
    assert Param("string", format="multiline").coerce("x", "a\nb") == "a\nb"


NET = PropertyFormat(
    {
        "bridge": Param("string", optional=True),
        "macaddr": Param("string", optional=True, format="mac-addr"),
        "model": Param("string", optional=True),
        "tag": Param("integer", optional=True, minimum=1, maximum=4094),
    },
    keyed_enum=("model", "macaddr", frozenset({"virtio", "e1000"})),
)

ROOTFS = PropertyFormat(
    {
        "volume": Param("string"),
        "size": Param("string", optional=True),
    },
    default_key="volume",
)


def test_property_string_keyed_enum_round_trip() -> None:
    parsed = NET.parse("virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=5")
    assert parsed == {
        "model": "virtio",
        "macaddr": "BC:24:11:00:00:01",
        "bridge": "vmbr0",
        "tag": 5,
    }
    assert NET.print(parsed) == "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=5"


def test_property_string_default_key() -> None:
    assert ROOTFS.parse("local:8") == {"volume": "local:8"}
    assert ROOTFS.parse("local:100/x.raw,size=8G") == {"volume": "local:100/x.raw", "size": "8G"}
    assert ROOTFS.print({"volume": "local:8", "size": "8G"}) == "local:8,size=8G"


@pytest.mark.parametrize(
    "text,reason",
    [
        ("bridge=vmbr0,bridge=vmbr1", "duplicate key"),
        ("colour=red", "unknown key 'colour'"),
        ("virtio=zz", "mac"),
        ("tag=9999", "maximum"),
        ("", "empty"),
        ("bridge=x,,tag=1", "empty element"),
    ],
)
def test_property_string_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        NET.parse(text)


def test_property_param_validates_through_schema() -> None:
    schema = Schema(indexed("net", 4, Param("string", optional=True, format=NET)))
    with pytest.raises(ParamError) as exc:
        schema.validate({"net0": "virtio,bridge=vmbr0", "net3": "bogus=1"})
    assert list(exc.value.errors) == ["net3"]
    assert "unknown key 'bogus'" in exc.value.errors["net3"]


@pytest.mark.parametrize(
    "fmt,good,bad",
    [
        ("pve-vmid", "100", "99"),
        ("pve-node", "node-1", "-node"),
        ("pve-storage-id", "local-lvm", "local/../x"),
        ("CIDR", "10.0.0.1/24", "10.0.0.1"),
        ("pve-userid", "admin@pve", "admin"),
        ("pve-volume-id", "local:100/vm-100-disk-0.qcow2", "local:../etc/passwd"),
        ("pve-volume-id", "local:iso/x.iso", "local:-o"),
    ],
)
def test_named_formats(fmt: str, good: str, bad: str) -> None:
    Param("string", format=fmt).coerce("x", good)
    with pytest.raises(ValueError):
        Param("string", format=fmt).coerce("x", bad)


def test_sizes() -> None:
    assert parse_size("8") == 8 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5G") == 3 << 29
    assert format_size(8 << 30) == "8G"
    assert format_size(512 << 20) == "512M"
    with pytest.raises(ValueError):
        parse_size("8X")


def test_json_schema_for_openapi() -> None:
    doc = SCHEMA.json_schema()
    assert doc["required"] == ["vmid"]
    assert doc["properties"]["vmid"]["minimum"] == 100
    assert doc["properties"]["mode"]["enum"] == ["a", "b"]
