"""Metrics for real: a corrald with a running CT, scraped by a real Prometheus
(Debian's), its rrddata history, pushes to Graphite and InfluxDB listeners on
loopback, and the ops files checked by promtool.

The Prometheus run uses docs/prometheus/prometheus.yml itself (targets, CA and
token file pointed at this test's node), so the documented setup is the one
tested. Everything started here (corrald, the CT, Prometheus, listeners) is
stopped at the end, even when a test fails.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from corral.lxc import cgroups
from tests.nodes import ct_node
from tests.util import VENV_BIN, ApiSession, Corrald, free_ports, wait_for

pytestmark = pytest.mark.timeout(420)
NODE = "node1"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "prometheus"


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scrape_port() -> int:
    return free_ports(1)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, scrape_port: int) -> Iterator[Corrald]:
    extra = ["--metrics-listen", f"127.0.0.1:{scrape_port}"]
    with ct_node(tmp_path_factory.mktemp("metrics") / "node", node=NODE, extra=extra) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def api(node: Corrald) -> ApiSession:
    return node.session()


@pytest.fixture(scope="module")
def token(api: ApiSession) -> str:
    tok = api.data("POST", "/access/users/admin@pve/token/prom", data={"privsep": 0})
    return f"admin@pve!prom={tok['value']}"


@pytest.fixture(scope="module")
def ct(node: Corrald, api: ApiSession) -> Iterator[int]:
    """A running busybox CT (no network: only its CPU and memory matter here)."""
    template = node.build_template()
    vmid = random.randint(60000, 69999)
    api.run_task(
        "POST", f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": template, "rootfs": "local:1",
              "memory": 128, "hostname": "metered", "onboot": 1, "start": 1},
    )  # fmt: skip
    yield vmid
    api.request("POST", f"/nodes/{NODE}/lxc/{vmid}/status/stop")
    time.sleep(1)
    api.request("DELETE", f"/nodes/{NODE}/lxc/{vmid}", params={"purge": 1})


def ct_pid(node: Corrald, vmid: int) -> int:
    out = subprocess.run(
        ["lxc-info", "-P", str(node.data_dir / "lxc"), "-n", str(vmid), "-p", "-H"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return int(out.strip())


class Burner:
    """A busy loop inside the CT (lxc-attach), stopped by kill."""

    def __init__(self, node: Corrald, vmid: int) -> None:
        argv = ["lxc-attach", "-P", str(node.data_dir / "lxc"), "-n", str(vmid), "--",
                "/bin/sh", "-c", "timeout 300 sh -c 'while :; do :; done'"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def prometheus(node: Corrald, token: str) -> Iterator[str]:
    """A real Prometheus on a loopback port, configured from docs/prometheus/."""
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is not installed (install.sh --test-deps)")
    work = Path(tempfile.mkdtemp(prefix="crlprom"))
    conf = _documented_config(work, node, token)
    conf["global"] = {"scrape_interval": "2s", "evaluation_interval": "2s"}
    conf["scrape_configs"] = [conf["scrape_configs"][0]]  # the per-node job
    (work / "prometheus.yml").write_text(yaml.safe_dump(conf))
    port = free_ports(1)
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/-/ready", timeout=2).ok, 60, 0.2, "prometheus")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def _documented_config(work: Path, node: Corrald, token: str) -> dict[str, Any]:
    """docs/prometheus/prometheus.yml with its files and targets made real in `work`."""
    text = (DOCS / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{work}/")
    shutil.copy(node.ca, work / "corral-ca.pem")
    (work / "corral-token").write_text(token)
    shutil.copy(DOCS / "corral-alerts.yml", work / "corral-alerts.yml")
    conf = yaml.safe_load(text)
    for job in conf["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{node.port}"]}]
    return conf


def promql(url: str, query: str) -> list[dict[str, Any]]:
    r = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=10)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def scrape(daemon: Corrald, token: str | None, **params: Any) -> requests.Response:
    headers = {"Authorization": f"PVEAPIToken={token}"} if token else {}
    return requests.get(
        f"{daemon.url}/metrics", headers=headers, params=params, verify=daemon.ca, timeout=30
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse (and so validate) exposition text: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict, metric: str, **labels: str) -> float | None:
    for (n, lab), v in parsed.items():
        if n == metric and all(dict(lab).get(k) == want for k, want in labels.items()):
            return float(v)
    return None


# -- the exposition ----------------------------------------------------------------------


def test_metrics_with_token_has_node_and_running_ct(node: Corrald, token: str, ct: int) -> None:
    def guest_shown() -> Any:
        r = scrape(node, token)
        assert r.status_code == 200, r.text
        parsed = samples(r.text)
        return parsed if value(parsed, "pve_up", id=f"lxc/{ct}") == 1 else None

    parsed = wait_for(guest_shown, 30, 0.5, "the CT running in /metrics")
    assert value(parsed, "pve_up", id=f"node/{NODE}") == 1
    info = [lab for (n, lab) in parsed if n == "pve_guest_info" and ("id", f"lxc/{ct}") in lab]
    assert info and dict(info[0]) == {
        "id": f"lxc/{ct}", "node": NODE, "name": "metered", "type": "lxc",
        "template": "", "tags": "",
    }  # fmt: skip
    assert value(parsed, "pve_memory_size_bytes", id=f"lxc/{ct}") == 128 << 20
    assert value(parsed, "pve_cpu_usage_limit", id=f"lxc/{ct}") is not None
    assert value(parsed, "pve_onboot_status", id=f"lxc/{ct}", node=NODE, type="lxc") == 1
    assert value(parsed, "pve_lock_state", id=f"lxc/{ct}", state="backup") == 0
    assert value(parsed, "pve_node_info", id=f"node/{NODE}", name=NODE) == 1
    assert value(parsed, "pve_storage_info", id=f"storage/{NODE}/local") == 1
    assert value(parsed, "pve_version_info") == 1
    # corral's own: the CT's create and start tasks, API latency, etcd round trips.
    assert value(parsed, "corral_tasks_total", type="vzcreate", status="ok") == 1
    assert (value(parsed, "corral_api_request_duration_seconds_count", method="GET") or 0) > 0
    assert (value(parsed, "corral_etcd_request_duration_seconds_count", result="ok") or 0) > 0


def test_metrics_auth_scope_and_bad_input(
    node: Corrald, api: ApiSession, token: str, ct: int, scrape_port: int
) -> None:
    assert scrape(node, None).status_code == 401
    assert scrape(node, "admin@pve!prom=wrong").status_code == 401
    r = scrape(node, token, cluster="maybe")
    assert r.status_code == 400 and "cluster" in r.json()["errors"]
    # Prometheus's `authorization: {type: PVEAPIToken}` form, and the /api2 alias.
    r = requests.get(f"{node.url}/api2/prometheus", verify=node.ca, timeout=30,
                     headers={"Authorization": f"PVEAPIToken {token}"})  # fmt: skip
    assert r.status_code == 200 and "pve_up" in r.text
    # One node's view: its own entries only, no cluster-level ones.
    parsed = samples(scrape(node, token, cluster=0).text)
    assert value(parsed, "pve_up", id=f"node/{NODE}") == 1
    assert value(parsed, "pve_cluster_info") is None
    assert value(parsed, "pve_onboot_status") is not None
    assert value(samples(scrape(node, token, node=0).text), "pve_onboot_status") is None
    # A privilege-separated token without ACL entries sees nothing it may not audit.
    tok = api.data("POST", "/access/users/admin@pve/token/blind", data={"privsep": 1})
    parsed = samples(scrape(node, f"admin@pve!blind={tok['value']}").text)
    assert value(parsed, "pve_guest_info") is None and value(parsed, "pve_up") is None
    # The opt-in scrape listener: plain HTTP, no credentials.
    r = requests.get(f"http://127.0.0.1:{scrape_port}/metrics", timeout=30)
    assert r.status_code == 200
    assert value(samples(r.text), "pve_up", id=f"lxc/{ct}") == 1


# -- Prometheus and history, while the CT burns CPU ------------------------------------------


def test_prometheus_and_rrddata_follow_a_busy_ct(
    node: Corrald, api: ApiSession, token: str, ct: int, prometheus: str
) -> None:
    info = wait_for(
        lambda: promql(prometheus, f'pve_guest_info{{id="lxc/{ct}"}}'), 60, 1, "pve_guest_info"
    )
    assert info[0]["metric"]["name"] == "metered" and info[0]["metric"]["job"] == "corral"
    rrd = f"/nodes/{NODE}/lxc/{ct}/rrddata"
    # A complete idle minute first, so the graph has a "before".
    idle = wait_for(
        lambda: [p for p in api.data("GET", rrd, params={"timeframe": "hour"}) if "cpu" in p],
        150, 2, "an idle rrd row",
    )  # fmt: skip
    assert idle[-1]["cpu"] < 0.2
    burner = Burner(node, ct)
    try:
        pid = ct_pid(node, ct)
        # An idle CT's figures are read every 10 s (a busy one's every 2 s round):
        # by 14 s into the burn two reads and scrapes have seen it.
        time.sleep(14)
        t0, u0 = time.monotonic(), cgroups.cpu_usage_ns(pid)
        time.sleep(4)
        t1, u1 = time.monotonic(), cgroups.cpu_usage_ns(pid)
        from_cgroup = (u1 - u0) / 1e9 / (t1 - t0) / (os.cpu_count() or 1)
        got = promql(prometheus, f'pve_cpu_usage_ratio{{id="lxc/{ct}"}}')
        from_prom = float(got[0]["value"][1])
        # A busy loop; on a shared 2-core machine under load it may get little of a core.
        assert from_cgroup > 0.02
        assert abs(from_prom - from_cgroup) < 0.15, (from_prom, from_cgroup)
        mem_cg = cgroups.memory(pid)[0]
        mem = float(promql(prometheus, f'pve_memory_usage_bytes{{id="lxc/{ct}"}}')[0]["value"][1])
        assert abs(mem - mem_cg) < max(4 << 20, 0.25 * mem_cg), (mem, mem_cg)

        seen: list[Any] = []
        busy = max(0.02, 3 * idle[-1]["cpu"], from_cgroup / 3)

        def busy_row() -> Any:
            rows = api.data("GET", rrd, params={"timeframe": "hour"})
            seen[:] = rows[-3:]
            return rows if rows[-1].get("cpu", 0) > busy else None

        try:
            rows = wait_for(busy_row, 150, 2, "a busy rrd row")
        except AssertionError as err:
            raise AssertionError(f"{err}; last rows {seen}; {node.log_tail(15)}") from None
    finally:
        burner.stop()
    assert len(rows) == 70 and rows[-1]["time"] - rows[-2]["time"] == 60
    assert {"maxcpu", "cpu", "maxmem", "mem", "disk", "maxdisk"} <= set(rows[-1])
    assert rows[-1]["maxmem"] == 128 << 20
    assert rows[-1]["cpu"] > busy > idle[-1]["cpu"]  # the points moved
    mx = api.data("GET", rrd, params={"timeframe": "hour", "cf": "MAX"})
    assert mx[-1]["cpu"] >= rows[-1]["cpu"] - 1e-9
    assert len(api.data("GET", rrd, params={"timeframe": "year"})) == 70

    node_rows = api.data("GET", f"/nodes/{NODE}/rrddata", params={"timeframe": "hour"})
    full = [p for p in node_rows if "cpu" in p]
    assert full and {"cpu", "memused", "memtotal", "loadavg", "rootused"} <= set(full[-1])
    store_rows = api.data("GET", f"/nodes/{NODE}/storage/local/rrddata",
                          params={"timeframe": "hour"})  # fmt: skip
    assert [p for p in store_rows if "used" in p and "total" in p]

    # History survives a restart of the node.
    node.stop()
    node.start()
    again = node.session().data("GET", rrd, params={"timeframe": "hour"})
    by_time = {p["time"]: p for p in again}
    assert by_time[rows[-1]["time"]].get("cpu") == pytest.approx(rows[-1]["cpu"])


def test_rrddata_bad_input(node: Corrald, ct: int) -> None:
    api = node.session()
    r = api.get(f"/nodes/{NODE}/rrddata", params={"timeframe": "fortnight"})
    assert r.status_code == 400 and "timeframe" in r.json()["errors"]
    r = api.get(f"/nodes/{NODE}/rrddata", params={"timeframe": "hour", "cf": "MIN"})
    assert r.status_code == 400 and "cf" in r.json()["errors"]
    assert api.get(f"/nodes/{NODE}/rrddata").status_code == 400
    assert api.get(f"/nodes/{NODE}/qemu/{ct}/rrddata", params={"timeframe": "hour"}).status_code \
        == 404  # fmt: skip
    r = api.get(f"/nodes/{NODE}/storage/nosuch/rrddata", params={"timeframe": "hour"})
    assert r.status_code == 404


# -- external metric servers -----------------------------------------------------------------


class _Collect(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request[0] if isinstance(self.request, tuple) else _read_all(self.request)
        self.server.received.append(data.decode())  # type: ignore[attr-defined]


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


class _Influx(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(  # type: ignore[attr-defined]
            (self.path, self.headers.get("Authorization"), body.decode())
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receivers() -> Iterator[dict[str, Any]]:
    """A Graphite plaintext TCP listener, an InfluxDB UDP and an HTTP (v2 write) one."""
    servers = {
        "graphite": socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Collect),
        "influx-udp": socketserver.UDPServer(("127.0.0.1", 0), _Collect),
        "influx-http": HTTPServer(("127.0.0.1", 0), _Influx),
    }
    for srv in servers.values():
        srv.received = []  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield servers
    for srv in servers.values():
        srv.shutdown()
        srv.server_close()


def test_metric_servers_crud_and_push(
    node: Corrald, api: ApiSession, ct: int, receivers: dict[str, Any]
) -> None:
    base = "/cluster/metrics/server"
    gport = receivers["graphite"].server_address[1]
    uport = receivers["influx-udp"].server_address[1]
    hport = receivers["influx-http"].server_address[1]
    # Bad input: 400 naming the parameter, nothing stored.
    r = api.post(f"{base}/bad", data={"type": "graphite", "server": "127.0.0.1", "port": 0})
    assert r.status_code == 400 and "port" in r.json()["errors"]
    r = api.post(f"{base}/bad", data={"type": "influxdb", "server": "127.0.0.1", "port": 1,
                                      "proto": "tcp"})  # fmt: skip
    assert r.status_code == 400 and "proto" in r.json()["errors"]
    r = api.post(f"{base}/bad", data={"type": "opentelemetry", "server": "x", "port": 1})
    assert r.status_code == 400 and "type" in r.json()["errors"]
    r = api.post(f"{base}/bad", data={"type": "influxdb", "server": "127.0.0.1", "port": 1,
                                      "otel-path": "/v1/metrics"})  # fmt: skip
    assert r.status_code == 400 and "not supported" in r.json()["errors"]["otel-path"]
    assert api.data("GET", base) == []

    api.data(
        "POST",
        f"{base}/graph",
        data={
            "type": "graphite",
            "server": "127.0.0.1",
            "port": gport,
            "proto": "tcp",
            "path": "corral.t",
        },
    )
    api.data("POST", f"{base}/udp", data={"type": "influxdb", "server": "127.0.0.1", "port": uport})
    api.data("POST", f"{base}/http", data={"type": "influxdb", "server": "127.0.0.1",
                                           "port": hport, "influxdbproto": "http",
                                           "bucket": "pve", "organization": "corral",
                                           "token": "s3cret"})  # fmt: skip
    assert api.post(f"{base}/graph", data={"type": "graphite", "server": "x", "port": 1}) \
        .status_code == 409  # fmt: skip
    listed = api.data("GET", base)
    assert [s["id"] for s in listed] == ["graph", "http", "udp"]
    conf = api.data("GET", f"{base}/http")
    assert conf["bucket"] == "pve" and "token" not in conf and conf["digest"]
    r = api.put(f"{base}/http", data={"digest": "0" * 40, "bucket": "x"})
    assert r.status_code == 409
    api.data("PUT", f"{base}/http", data={"digest": conf["digest"], "mtu": 1400})
    assert api.data("GET", f"{base}/http")["mtu"] == 1400

    def arrived() -> Any:
        g = "".join(receivers["graphite"].received)
        u = "".join(receivers["influx-udp"].received)
        h = receivers["influx-http"].received
        want = f"corral.t.lxc.{ct}.cpu " in g and f"object=lxc,vmid={ct}" in u and h
        return (g, u, h) if want else None

    graphite, udp, http = wait_for(arrived, 30, 0.5, "pushed metrics at every receiver")
    lines = graphite.splitlines()
    node_cpu = [ln for ln in lines if ln.startswith(f"corral.t.nodes.{NODE}.cpustat.cpu ")]
    assert node_cpu and abs(int(node_cpu[0].split()[2]) - time.time()) < 60
    assert any(ln.startswith(f"corral.t.lxc.{ct}.maxmem {128 << 20} ") for ln in lines)
    assert any(ln.startswith(f"corral.t.storages.{NODE}.local.total ") for ln in lines)
    assert f"system,object=nodes,host={NODE} " in udp or f"cpustat,object=nodes,host={NODE} " in udp
    ct_line = next(ln for ln in udp.splitlines() if f"vmid={ct}," in ln and ln.startswith("sys"))
    assert "host=metered " in ct_line and f"maxmem={128 << 20}" in ct_line
    assert ct_line.split()[-1].endswith("000000000")  # nanoseconds
    path, auth, body = http[0]
    assert path.startswith("/api/v2/write?") and "bucket=pve" in path and "org=corral" in path
    assert auth == "Token s3cret" and f"vmid={ct}" in body

    api.data("PUT", f"{base}/graph", data={"disable": 1})
    assert [s["disable"] for s in api.data("GET", base) if s["id"] == "graph"] == [1]
    for sid in ("graph", "udp", "http"):
        api.data("DELETE", f"{base}/{sid}")
    assert api.data("GET", base) == []
    assert api.delete(f"{base}/graph").status_code == 404


# -- ops files ---------------------------------------------------------------------------


def test_promtool_checks_documented_config_and_rules(node: Corrald, token: str) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    with tempfile.TemporaryDirectory(prefix="crlpromtool") as work:
        conf = _documented_config(Path(work), node, token)
        (Path(work) / "prometheus.yml").write_text(yaml.safe_dump(conf))
        for argv in (
            ["promtool", "check", "config", f"{work}/prometheus.yml"],
            ["promtool", "check", "rules", str(DOCS / "corral-alerts.yml")],
            ["promtool", "test", "rules", str(DOCS / "corral-alerts.test.yml")],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stdout + proc.stderr
    # The documented file itself parses, with the jobs it promises.
    jobs = [j["job_name"] for j in yaml.safe_load((DOCS / "prometheus.yml").read_text())[
        "scrape_configs"]]  # fmt: skip
    assert jobs == ["corral", "corral-cluster"]
    assert json.loads(json.dumps(jobs))


# -- the same names and labels as the stock exporter -----------------------------------


@pytest.fixture(scope="module")
def exporter(node: Corrald) -> Iterator[str]:
    """prometheus-pve-exporter itself, as its users run it, pointed at the same node."""
    binary = VENV_BIN / "pve_exporter"
    if not binary.exists():
        pytest.skip("prometheus-pve-exporter is not installed (install.sh --test-deps)")
    port = free_ports(1)
    env = {**os.environ, "PVE_USER": "admin@pve", "PVE_PASSWORD": node.password,
           "PVE_VERIFY_SSL": "false"}  # fmt: skip
    log = open(node.data_dir / "pve-exporter.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(binary), "--web.listen-address", f"127.0.0.1:{port}"], env=env, stdout=log,
        stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url, timeout=5).ok, 60, 0.2, "pve_exporter listening")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def shapes(text: str) -> dict[str, set[tuple[str, ...]]]:
    """pve_* sample name -> the label-name sets its samples carry."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("pve_"):
                out.setdefault(s.name, set()).add(tuple(sorted(s.labels)))
    return out


def test_same_names_labels_and_values_as_prometheus_pve_exporter(
    node: Corrald, token: str, ct: int, exporter: str
) -> None:
    r = requests.get(
        f"{exporter}/pve",
        timeout=120,
        params={"target": f"127.0.0.1:{node.port}", "cluster": "1", "node": "1"},
    )
    assert r.status_code == 200, r.text
    theirs = r.text
    ours = scrape(node, token).text
    assert shapes(ours) == shapes(theirs)
    a, b = samples(ours), samples(theirs)
    steady = (
        "pve_guest_info",
        "pve_memory_size_bytes",
        "pve_cpu_usage_limit",
        "pve_up",
        "pve_onboot_status",
        "pve_ha_state",
        "pve_lock_state",
        "pve_disk_size_bytes",
        "pve_node_info",
        "pve_storage_info",
        "pve_version_info",
        "pve_cluster_info",
        "pve_not_backed_up_info",
        "pve_subscription_status",
        "pve_storage_shared",
    )
    for key, v in b.items():
        if key[0] in steady:
            assert a.get(key) == v, (key, a.get(key), v)
