// Datacenter, node and storage pages (live from the shared state).
"use strict";
import { call, el, fmtBytes, fmtPct, fmtUptime, attempt, ApiError, session, toast } from "./api.js";
import { follow } from "./tasks.js";
import { state } from "./main.js";
import { href } from "./tree.js";
import { rrdCharts } from "./chart.js";
import { terminalConsole } from "./term.js";
import { nodeTabs, servicesTab, networkTab, syslogTab, downloadForm } from "./node.js";

function stat(label, value, ratio) {
  return el("div", { class: "stat" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value),
    ratio === undefined ? null : el("div", { class: "bar", role: "img", "aria-label": `${(100 * ratio).toFixed(0)} %` },
      el("span", { style: null, "data-w": ratio })));
}

// Widths are set through the CSSOM (the page's CSP forbids inline style attributes).
function bars(root) {
  for (const s of root.querySelectorAll("[data-w]")) s.style.width = `${Math.min(100, 100 * Number(s.dataset.w || 0)).toFixed(1)}%`;
}

function guestTable(rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ["ID", "Name", "Type", "Node", "Status", "CPU", "Memory", "Uptime"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? [] : el("tr", {}, el("td", { colspan: "8", class: "muted" }, "No guests yet.")), rows.map((r) => el("tr", { "data-id": r.id },
      el("td", {}, el("a", { href: href(r) }, String(r.vmid))), el("td", {}, r.name || ""), el("td", {}, r.type === "lxc" ? "CT" : "VM"),
      el("td", {}, r.node), el("td", { class: r.status }, r.status), el("td", {}, fmtPct(r.cpu)),
      el("td", {}, r.maxmem ? `${fmtBytes(r.mem)} / ${fmtBytes(r.maxmem)}` : ""), el("td", {}, fmtUptime(r.uptime))))));
}

// "3 (2 started, 1 error)" from the rows' `hastate`.
function ha(guests) {
  const managed = guests.filter((g) => g.hastate);
  if (!managed.length) return "none";
  const by = {};
  for (const g of managed) by[g.hastate] = (by[g.hastate] || 0) + 1;
  return `${managed.length} (${Object.entries(by).map(([k, n]) => `${n} ${k}`).join(", ")})`;
}

export function datacenterPage(main) {
  const body = el("div");
  main.append(el("h1", {}, "Datacenter"), body);
  const update = () => {
    const res = state.resources;
    const nodes = res.filter((r) => r.type === "node");
    const guests = res.filter((r) => r.type === "lxc" || r.type === "qemu");
    const head = (state.status || []).find((s) => s.type === "cluster");
    const sum = (rows, k) => rows.reduce((a, r) => a + (Number(r[k]) || 0), 0);
    const online = nodes.filter((n) => n.status === "online");
    const storages = res.filter((r) => r.type === "storage" && r.status === "available");
    const count = (type, st) => guests.filter((g) => g.type === type && (!st || g.status === st)).length;
    body.replaceChildren(
      el("div", { class: "grid" },
        stat("Cluster", head ? `${head.name} · ${head.quorate ? "quorate" : "not quorate"}` : "-"),
        stat("Nodes online", `${online.length} / ${nodes.length}`, nodes.length ? online.length / nodes.length : 0),
        stat("VMs running", `${count("qemu", "running")} / ${count("qemu")}`),
        stat("CTs running", `${count("lxc", "running")} / ${count("lxc")}`),
        stat("HA-managed guests", ha(guests)),
        stat("CPU", fmtPct(sum(online, "cpu") / Math.max(1, online.length)), sum(online, "cpu") / Math.max(1, online.length)),
        stat("Memory", `${fmtBytes(sum(online, "mem"))} / ${fmtBytes(sum(online, "maxmem"))}`, sum(online, "mem") / Math.max(1, sum(online, "maxmem"))),
        stat("Storage", `${fmtBytes(sum(storages, "disk"))} / ${fmtBytes(sum(storages, "maxdisk"))}`, sum(storages, "disk") / Math.max(1, sum(storages, "maxdisk")))),
      el("h2", {}, "Nodes"),
      el("table", { id: "nodes" }, el("thead", {}, el("tr", {}, ["Node", "Status", "CPU", "Memory", "Disk", "Uptime"].map((h) => el("th", {}, h)))),
        el("tbody", {}, nodes.map((n) => el("tr", { "data-id": n.id },
          el("td", {}, el("a", { href: href(n) }, n.node)), el("td", { class: n.status }, n.status), el("td", {}, fmtPct(n.cpu)),
          el("td", {}, `${fmtBytes(n.mem)} / ${fmtBytes(n.maxmem)}`), el("td", {}, `${fmtBytes(n.disk)} / ${fmtBytes(n.maxdisk)}`),
          el("td", {}, fmtUptime(n.uptime)))))),
      el("h2", {}, "Guests"),
      guestTable(guests.sort((a, b) => a.vmid - b.vmid)));
    bars(body);
  };
  update();
  return { update };
}

function virt(d) {
  const box = stat("Virtualisation", !d.cpuinfo ? "-" : d.cpuinfo.hvm ? "hardware (KVM)" : "TCG only");
  if (d.cpuinfo && !d.cpuinfo.hvm && d.hvm_reason) box.append(el("div", { class: "label" }, d.hvm_reason));
  return box;
}

export function nodePage(main, node, tab) {
  if (tab === "shell") {
    main.append(el("h1", {}, el("span", { class: "kind" }, "node"), node, el("a", { href: `#/node/${encodeURIComponent(node)}` }, "back to summary")), nodeTabs(node, tab));
    return terminalConsole(main, node, null);
  }
  const other = { services: servicesTab, network: networkTab, syslog: syslogTab }[tab];
  if (other) {
    const body = el("div");
    main.append(el("h1", {}, el("span", { class: "kind" }, "node"), node), nodeTabs(node, tab), body);
    return other(body, node);
  }
  const body = el("div");
  const guests = el("div");
  const graphs = el("div", { class: "charts" });
  const tasks = el("div");
  main.append(el("h1", {}, el("span", { class: "kind" }, "node"), node), nodeTabs(node, "summary"),
    el("div", { class: "toolbar" }, el("button", { id: "node-shell", onclick: () => { location.hash = `#/node/${encodeURIComponent(node)}/shell`; } }, "Shell")),
    body, el("h2", {}, "Graphs (hour)"), graphs,
    el("h2", {}, "Guests"), guests, el("h2", {}, "Tasks on this node"), tasks);
  let detail = null;
  const load = async () => {
    detail = await call("GET", `/nodes/${encodeURIComponent(node)}/status`).catch(() => null);
    update();
    const list = await call("GET", `/nodes/${encodeURIComponent(node)}/tasks`, { limit: 15 }).catch(() => []);
    tasks.replaceChildren(el("table", {}, el("tbody", {}, list.map((t) => el("tr", {}, el("td", {}, t.type), el("td", {}, t.id || ""), el("td", {}, t.user), el("td", {}, t.status || "running"))))));
  };
  const update = () => {
    const n = state.find(`node/${node}`);
    if (!n) { body.replaceChildren(el("p", { class: "error" }, `No node '${node}'.`)); return; }
    const d = detail || {};
    body.replaceChildren(el("div", { class: "grid" },
      stat("Status", n.status),
      stat("CPU", `${fmtPct(n.cpu)} of ${n.maxcpu || "?"} CPUs`, n.cpu || 0),
      stat("Memory", `${fmtBytes(n.mem)} / ${fmtBytes(n.maxmem)}`, n.maxmem ? n.mem / n.maxmem : 0),
      stat("Root disk", `${fmtBytes(n.disk)} / ${fmtBytes(n.maxdisk)}`, n.maxdisk ? n.disk / n.maxdisk : 0),
      stat("Uptime", fmtUptime(n.uptime)),
      stat("Load average", (d.loadavg || []).join(" ") || "-"),
      stat("Kernel", (d.kversion || "-").split(" ").slice(0, 3).join(" ")),
      virt(d)));
    guests.replaceChildren(guestTable(state.resources.filter((r) => (r.type === "lxc" || r.type === "qemu") && r.node === node)));
    bars(body);
  };
  update();
  load();
  const charts = rrdCharts(graphs, `/nodes/${encodeURIComponent(node)}/rrddata`, [["cpu", "CPU", "ratio"], ["memused", "Memory", "bytes"], ["loadavg", "Load", "plain"], ["netin", "Net in", "rate"]]);
  const timer = setInterval(() => load(), 5000);
  return { update, dispose: () => { clearInterval(timer); charts.dispose(); } };
}

export function storagePage(main, node, storage) {
  const body = el("div");
  const content = el("div");
  const base = `/nodes/${encodeURIComponent(node)}/storage/${encodeURIComponent(storage)}`;
  const progress = el("progress", { max: "100", value: "0", hidden: true, id: "upload-progress", "aria-label": "Upload progress" });
  const upload = el("form", { class: "toolbar", id: "upload" },
    el("select", { name: "content", "aria-label": "Content type" }, el("option", { value: "iso" }, "ISO image"), el("option", { value: "vztmpl" }, "Container template")),
    el("input", { type: "file", name: "file", "aria-label": "File to upload", required: true }),
    el("button", { type: "submit", class: "primary" }, "Upload"), progress);
  upload.addEventListener("submit", (ev) => {
    ev.preventDefault();
    // XMLHttpRequest, not fetch: it reports upload progress. Same API call as any client.
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api2/json${base}/upload`);
    xhr.setRequestHeader("CSRFPreventionToken", session.csrf);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = String(Math.round(100 * e.loaded / e.total)); };
    xhr.onload = () => {
      progress.hidden = true;
      let answer = {};
      try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = {}; }
      if (xhr.status !== 200) { toast(answer.message || xhr.statusText); return; }
      follow(answer.data);
      upload.reset();
      load();
    };
    xhr.onerror = () => { progress.hidden = true; toast("upload failed: connection lost"); };
    progress.hidden = false;
    progress.value = "0";
    xhr.send(new FormData(upload));
  });
  main.append(el("h1", {}, el("span", { class: "kind" }, "storage"), `${storage} on ${node}`), body, el("h2", {}, "Content"), upload, downloadForm(base, () => load()), content);
  const update = () => {
    const s = state.find(`storage/${node}/${storage}`);
    if (!s) { body.replaceChildren(el("p", { class: "error" }, `No storage '${storage}' on '${node}'.`)); return; }
    body.replaceChildren(el("div", { class: "grid" }, stat("Status", s.status), stat("Type", s.plugintype || "-"),
      stat("Content", (s.content || "-").replaceAll(",", ", ")), stat("Usage", `${fmtBytes(s.disk)} / ${fmtBytes(s.maxdisk)}`, s.maxdisk ? s.disk / s.maxdisk : 0)));
    bars(body);
  };
  const remove = (volid) => attempt(async () => {
    if (!confirm(`Delete ${volid}?`)) return;
    const answer = await call("DELETE", `${base}/content/${encodeURIComponent(volid)}`);
    if (answer) follow(answer);
    setTimeout(load, 500);
  });
  const load = () => attempt(async () => {
    try {
      const rows = await call("GET", `${base}/content`);
      content.replaceChildren(el("table", { id: "content-list" }, el("thead", {}, el("tr", {}, ["Volume", "Content", "Format", "Size", "Guest", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows.map((v) => el("tr", { "data-volid": v.volid }, el("td", {}, v.volid), el("td", {}, v.content), el("td", {}, v.format || ""),
          el("td", {}, fmtBytes(v.size)), el("td", {}, v.vmid ? String(v.vmid) : ""),
          el("td", {}, v.vmid ? "" : el("button", { class: "link danger", "aria-label": `Delete ${v.volid}`, onclick: () => remove(v.volid) }, "Delete")))))));
    } catch (e) {
      content.replaceChildren(el("p", { class: "error" }, e instanceof ApiError ? e.detail : String(e)));
    }
  });
  update();
  load();
  return { update };
}
