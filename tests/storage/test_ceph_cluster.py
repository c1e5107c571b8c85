"""CephCluster's promises that the contract suite does not show: what stop() may kill."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from corral.storage.ceph_cluster import CephCluster


def test_stop_signals_only_recorded_pids_that_are_still_ours(tmp_path: Path) -> None:
    cluster = CephCluster(str(tmp_path / "ceph"), mon_port=1, mon_v1_port=2)
    os.makedirs(tmp_path / "ceph" / "pids")
    # A process that is not this cluster's daemon, under a recorded PID (a PID reused).
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "ceph" / "pids" / "mon.pid").write_text(str(stranger.pid))
        cluster.stop(timeout=2)
        assert stranger.poll() is None, "stop() killed a process that was not its daemon"
        assert not (tmp_path / "ceph" / "pids" / "mon.pid").exists()
    finally:
        stranger.kill()
        stranger.wait(10)


def test_conf_names_the_cluster_and_keeps_daemon_paths_out_of_global(tmp_path: Path) -> None:
    cluster = CephCluster(str(tmp_path), mon_port=41000, mon_v1_port=41001,
                          osd_ports=(41002, 41040))  # fmt: skip
    cluster._write_conf()
    text = Path(cluster.conf_path).read_text()
    glob = text.split("[mon]")[0]
    assert "mon_host = [v2:127.0.0.1:41000,v1:127.0.0.1:41001]" in glob
    assert "ms_bind_port_min = 41002" in glob and "ms_bind_port_max = 41040" in glob
    assert "log_file" not in glob and "admin_socket" not in glob  # clients must not log there
    assert f"keyring = {cluster.keyring_path}" in text.split("[client]")[1]
    assert cluster.monhost == "[v2:127.0.0.1:41000,v1:127.0.0.1:41001]"
