"""What every guest driver promises (corral.cluster.guest_driver), held against
liblxc, libvirt under TCG and the in-tree fake alike.

A driver that passes here can be driven by the guest flow and the guest
service without any `type == ...` or `getattr` at the callers.
"""

from __future__ import annotations

import inspect

import pytest

from corral.cluster.errors import CorralError, NotSupported, ParamError
from corral.cluster.guest_driver import DriverInfo, GuestDriver, Probe
from corral.cluster.schema import Schema
from tests.contract.conftest import Subject, _noop, new_vmid

# Every driver method a caller in corral uses; each must be part of the contract.
CALLED = (
    "config_schema", "probe", "close", "check_create", "create", "start", "shutdown", "stop",
    "reboot", "reset", "suspend", "resume", "destroy", "status", "running", "apply_live",
    "resize", "volumes_of", "adopt", "release", "migrate_live", "interfaces", "console",
)  # fmt: skip


def test_the_contract_declares_every_method_callers_use() -> None:
    missing = [name for name in CALLED if not callable(getattr(GuestDriver, name, None))]
    assert not missing
    for name in CALLED:
        assert inspect.getdoc(getattr(GuestDriver, name)) or name in (
            "reset", "suspend", "resume", "interfaces", "console", "reboot"
        ), f"GuestDriver.{name} states no contract"  # fmt: skip


def test_declarations(subject: Subject) -> None:
    drv = subject.driver
    assert isinstance(drv.info, DriverInfo) and drv.info.type in ("lxc", "qemu")
    assert isinstance(drv.config_schema(), Schema)
    assert drv.info.live_config <= set(drv.config_schema().props)
    assert isinstance(drv.probe(), Probe)


def test_create_gives_a_stopped_guest_and_its_volumes(subject: Subject) -> None:
    vmid = new_vmid()
    config = subject.create(vmid)
    assert subject.driver.status(vmid, config)["status"] == "stopped"
    assert vmid not in subject.driver.running()
    vols = subject.driver.volumes_of(config)
    assert vols, "a created guest has at least one volume"
    for volid in vols.values():
        storage, _, name = volid.partition(":")
        assert storage and name and not name.replace(".", "").isdigit(), volid


def test_start_stop_and_stop_again(subject: Subject) -> None:
    drv, vmid = subject.driver, new_vmid()
    config = subject.create(vmid)
    drv.start(vmid, config, volumes=subject.volumes, log=_noop)
    assert drv.status(vmid, config)["status"] == "running"
    assert vmid in drv.running()
    drv.stop(vmid, config, log=_noop)
    assert drv.status(vmid, config)["status"] == "stopped"
    assert vmid not in drv.running()
    drv.stop(vmid, config, log=_noop)  # stopping a stopped guest is not an error


def test_shutdown_with_force_stop_ends_stopped(subject: Subject) -> None:
    drv, vmid = subject.driver, new_vmid()
    config = subject.create(vmid)
    drv.start(vmid, config, volumes=subject.volumes, log=_noop)
    drv.shutdown(vmid, config, timeout=3, force_stop=True, log=_noop)
    assert drv.status(vmid, config)["status"] == "stopped"


def test_suspend_and_resume_as_declared(subject: Subject) -> None:
    drv, vmid = subject.driver, new_vmid()
    config = subject.create(vmid)
    if not drv.info.can_suspend:
        with pytest.raises(NotSupported):
            drv.suspend(vmid, config, log=_noop)
        return
    drv.start(vmid, config, volumes=subject.volumes, log=_noop)
    drv.suspend(vmid, config, log=_noop)
    st = drv.status(vmid, config)
    # Proxmox reports a suspended guest as running: a VM paused, a CT frozen.
    assert st["status"] == "running" and (st.get("qmpstatus") == "paused" or st.get("frozen"))
    assert vmid in drv.running()
    drv.resume(vmid, config, log=_noop)
    st = drv.status(vmid, config)
    assert st["status"] == "running" and st.get("qmpstatus", "running") == "running"
    assert not st.get("frozen")
    drv.stop(vmid, config, log=_noop)


def test_apply_live_applies_only_declared_keys(subject: Subject) -> None:
    drv, vmid = subject.driver, new_vmid()
    config = subject.create(vmid)
    drv.start(vmid, config, volumes=subject.volumes, log=_noop)
    new = {**config, "memory": 96, "description": "changed"}
    applied = drv.apply_live(vmid, config, new, volumes=subject.volumes, log=_noop)
    assert applied <= drv.info.live_config
    assert applied <= {"memory", "description"}
    drv.stop(vmid, config, log=_noop)


def test_release_keeps_volumes_and_adopt_brings_the_guest_back(subject: Subject) -> None:
    drv, vmid = subject.driver, new_vmid()
    config = subject.create(vmid)
    drv.release(vmid, config, volumes=subject.volumes, log=_noop)
    if subject.name != "fake":
        for volid in drv.volumes_of(config).values():
            assert subject.volumes.size(volid) >= 0  # still there
    drv.adopt(vmid, config, volumes=subject.volumes, log=_noop)
    drv.adopt(vmid, config, volumes=subject.volumes, log=_noop)  # idempotent
    drv.start(vmid, config, volumes=subject.volumes, log=_noop)
    assert drv.status(vmid, config)["status"] == "running"
    drv.stop(vmid, config, log=_noop)


def test_destroy_frees_the_guest_and_its_volumes(subject: Subject) -> None:
    drv, vmid = subject.driver, new_vmid()
    config = subject.create(vmid)
    vols = list(drv.volumes_of(config).values())
    drv.destroy(vmid, config, volumes=subject.volumes, log=_noop)
    subject.made.remove((vmid, config))
    assert drv.status(vmid, config)["status"] == "stopped"
    assert vmid not in drv.running()
    if subject.name != "fake":
        for volid in vols:
            with pytest.raises(CorralError):
                subject.volumes.size(volid)


def test_check_create_refuses_bad_storage_naming_the_key(subject: Subject) -> None:
    if subject.bad_create is None:
        pytest.skip("the fake driver has no storage to judge")
    config, params, key = subject.bad_create
    vmid = new_vmid()
    with pytest.raises(ParamError) as err:
        subject.driver.check_create(vmid, config, params=params, volumes=subject.volumes)
    assert key in err.value.errors, err.value.errors
    with pytest.raises(ParamError) as err:  # create() on the node says it too, makes nothing
        subject.driver.create(vmid, config, volumes=subject.volumes, log=_noop, params=params)
    assert key in err.value.errors, err.value.errors
    assert subject.driver.status(vmid, config)["status"] == "stopped"
