"""A consistent copy of a running VM's disks through libvirt's backup job.

`virDomainBackupBegin` in push mode makes QEMU copy each disk as it was when
the job began (copy-before-write: blocks the guest overwrites afterwards are
saved first), while the guest keeps running. The copies are raw files in a
work folder the caller removes; the archive is written from them.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import libvirt

from corral.cluster.errors import CommandFailed, Conflict
from corral.cluster.guest_driver import LogFn

if TYPE_CHECKING:
    from corral.kvm.driver import QemuDriver

JOB_TIMEOUT = 6 * 3600.0


def backup_xml(targets: dict[str, str], all_devs: list[str]) -> str:
    """<domainbackup> copying each dev of `targets` (dev -> raw file); others skipped."""
    root = ET.Element("domainbackup", mode="push")
    disks = ET.SubElement(root, "disks")
    for dev in all_devs:
        if dev in targets:
            disk = ET.SubElement(disks, "disk", name=dev, backup="yes", type="file")
            ET.SubElement(disk, "target", file=targets[dev])
            ET.SubElement(disk, "driver", type="raw")
        else:
            ET.SubElement(disks, "disk", name=dev, backup="no")
    return ET.tostring(root, encoding="unicode")


def run(
    drv: QemuDriver,
    vmid: int,
    devs: dict[str, str],
    workdir: str,
    *,
    log: LogFn,
    progress: LogFn | None = None,
) -> dict[str, str]:
    """Copy disks `devs` (config key -> target dev) of the running VM into
    `workdir`; returns config key -> raw file."""
    dom = drv._domain(vmid)
    if not drv._active(dom):
        raise Conflict(f"VM {vmid} not running")
    assert dom is not None
    root = ET.fromstring(drv.lv.run("domain XML", dom.XMLDesc, 0))
    all_devs = [
        t.get("dev", "")
        for d in root.findall("./devices/disk")
        if (t := d.find("target")) is not None
    ]
    files = {key: os.path.join(workdir, f"disk-drive-{key}.raw") for key in devs}
    xml = backup_xml({devs[k]: files[k] for k in devs}, all_devs)
    drv.lv.run(f"backup VM {vmid}", dom.backupBegin, xml, None, 0)
    log(f"libvirt backup job started for {', '.join(sorted(devs))}")
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        info = drv.lv.run("job info", dom.jobStats, 0)
        if info.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            break
        if progress and info.get("data_total"):
            progress(f"{info.get('data_processed', 0)}/{info['data_total']}")
        if time.monotonic() > deadline:
            drv.lv.run("abort job", dom.abortJob)
            raise CommandFailed(cmd="backup", stderr="the backup job did not finish in time")
        time.sleep(0.2)
    done = drv.lv.run("job result", dom.jobStats, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    if done.get("type") != libvirt.VIR_DOMAIN_JOB_COMPLETED:
        raise CommandFailed(
            cmd="backup", stderr=str(done.get("errmsg") or f"job ended as {done.get('type')}")
        )
    log("libvirt backup job completed")
    return files
