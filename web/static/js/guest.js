// A guest's pages: summary with power operations and graphs, console, configuration.
"use strict";
import { call, el, fmtBytes, fmtPct, fmtUptime, attempt, toast } from "./api.js";
import { state, poke } from "./main.js";
import { follow } from "./tasks.js";
import { rrdCharts } from "./chart.js";
import { terminalConsole } from "./term.js";
import { vncConsole } from "./vnc.js";
import { migrateDialog } from "./migrate.js";
import { backupTab } from "./guest_backup.js";

const KIND = { lxc: "CT", qemu: "VM" };
const OPS = {
  running: ["shutdown", "reboot", "stop", "suspend"],
  stopped: ["start"],
  paused: ["resume", "stop"],
  suspended: ["resume", "stop"],
};

export function guestPage(main, type, vmid, tab) {
  const id = `${type}/${vmid}`;
  const r = state.find(id);
  if (!r) {
    main.append(el("h1", {}, `${KIND[type] || type} ${vmid}`), el("p", { class: "muted" }, `${KIND[type] || type} ${vmid} does not exist (yet).`));
    // A guest being created appears within a refresh: show it then.
    return { update: () => { if (state.find(id)) window.dispatchEvent(new HashChangeEvent("hashchange")); } };
  }
  const base = `/nodes/${encodeURIComponent(r.node)}/${type}/${vmid}`;
  const title = el("h1", {}, el("span", { class: "kind" }, KIND[type]), `${vmid} (${r.name || ""})`, el("span", { class: "muted", id: "guest-node" }, `on ${r.node}`));
  const tabs = el("nav", { class: "tabs", "aria-label": "Guest pages" },
    ["summary", "console", "config", "snapshots", "backup"].map((t) => el("a", { href: `#/guest/${type}/${vmid}/${t}`, "aria-current": t === tab ? "page" : null },
      { summary: "Summary", console: "Console", config: type === "lxc" ? "Resources & options" : "Hardware & options", snapshots: "Snapshots", backup: "Backup" }[t])));
  const body = el("div");
  main.append(title, tabs, body);
  const page = tab === "console" ? consoleTab(body, type, vmid) : tab === "config" ? configTab(body, type, vmid)
    : tab === "snapshots" ? snapshotsTab(body, type, vmid) : tab === "backup" ? backupTab(body, type, vmid) : summaryTab(body, type, vmid);
  return {
    update() {
      const now = state.find(id);
      if (now) title.querySelector("#guest-node").textContent = `on ${now.node}`;
      if (page && page.update) page.update(now);
    },
    dispose() { if (page && page.dispose) page.dispose(); },
  };
}

function nodeOf(type, vmid) {
  const r = state.find(`${type}/${vmid}`);
  return r ? r.node : null;
}

export function power(type, vmid, op) {
  return attempt(async () => {
    const node = nodeOf(type, vmid);
    follow(await call("POST", `/nodes/${encodeURIComponent(node)}/${type}/${vmid}/status/${op}`));
    poke();
  });
}

// The same calls an automation makes; each answers a task, followed in the panel.
function act(method, path, params) {
  return attempt(async () => { follow(await call(method, path, params)); poke(); });
}

async function clone(type, vmid) {
  const next = await call("GET", "/cluster/nextid").catch(() => "");
  const newid = prompt(`Clone ${vmid} as which ID?`, String(next));
  if (!newid) return;
  act("POST", `/nodes/${encodeURIComponent(nodeOf(type, vmid))}/${type}/${vmid}/clone`, { newid, full: 1 });
}

function backup(type, vmid) {
  const storage = prompt(`Back up ${vmid} to which storage?`, "local");
  if (!storage) return;
  act("POST", `/nodes/${encodeURIComponent(nodeOf(type, vmid))}/vzdump`, { vmid, storage, mode: "snapshot" });
}

function template(type, vmid) {
  if (confirm(`Convert ${vmid} to a template? It can then only be cloned.`)) act("POST", `/nodes/${encodeURIComponent(nodeOf(type, vmid))}/${type}/${vmid}/template`);
}

function summaryTab(body, type, vmid) {
  const toolbar = el("div", { class: "toolbar", role: "toolbar", "aria-label": "Power" });
  const grid = el("div", { class: "grid" });
  const graphs = el("div", { class: "charts" });
  body.append(toolbar, grid, el("h2", {}, "Graphs (hour)"), graphs);
  let lastStatus = null;
  const update = (r) => {
    if (!r) return;
    if (r.status !== lastStatus) {
      lastStatus = r.status;
      toolbar.replaceChildren(...(OPS[r.status] || ["start", "stop"]).map((op) =>
        el("button", { class: op === "stop" ? "danger" : op === "start" ? "primary" : "", "data-op": op, onclick: () => power(type, vmid, op) },
          op[0].toUpperCase() + op.slice(1))),
        el("button", { onclick: () => { location.hash = `#/guest/${type}/${vmid}/console`; }, disabled: r.status !== "running" }, "Console"),
        el("span", { class: "spacer" }),
        el("button", { id: "act-migrate", onclick: () => migrateDialog(type, vmid, state.find(`${type}/${vmid}`) || r, act) }, "Migrate"),
        el("button", { id: "act-clone", onclick: () => clone(type, vmid) }, "Clone"),
        el("button", { id: "act-backup", onclick: () => backup(type, vmid) }, "Back up"),
        r.template ? null : el("button", { id: "act-template", disabled: r.status === "running", onclick: () => template(type, vmid) }, "Convert to template"));
    }
    grid.replaceChildren(...[
      el("div", { class: "stat" }, el("div", { class: "label" }, "Status"), el("div", { class: "value", id: "guest-status" }, r.status || "-")),
      el("div", { class: "stat" }, el("div", { class: "label" }, "Node"), el("div", { class: "value" }, r.node)),
      el("div", { class: "stat" }, el("div", { class: "label" }, "CPU"), el("div", { class: "value" }, `${fmtPct(r.cpu)} of ${r.maxcpu || "?"}`)),
      el("div", { class: "stat" }, el("div", { class: "label" }, "Memory"), el("div", { class: "value" }, `${fmtBytes(r.mem)} / ${fmtBytes(r.maxmem)}`)),
      el("div", { class: "stat" }, el("div", { class: "label" }, "Disk"), el("div", { class: "value" }, r.maxdisk ? `${fmtBytes(r.disk)} / ${fmtBytes(r.maxdisk)}` : "-")),
      el("div", { class: "stat" }, el("div", { class: "label" }, "Uptime"), el("div", { class: "value" }, fmtUptime(r.uptime))),
      r.tags ? el("div", { class: "stat" }, el("div", { class: "label" }, "Tags"), el("div", { class: "value" }, r.tags)) : null,
      r.lock ? el("div", { class: "stat" }, el("div", { class: "label" }, "Lock"), el("div", { class: "value" }, r.lock)) : null,
      r.hastate ? el("div", { class: "stat" }, el("div", { class: "label" }, "HA state"), el("div", { class: "value" }, r.hastate)) : null,
    ].filter(Boolean));
  };
  update(state.find(`${type}/${vmid}`));
  const charts = rrdCharts(graphs, `/nodes/${encodeURIComponent(nodeOf(type, vmid))}/${type}/${vmid}/rrddata`,
    [["cpu", "CPU", "ratio"], ["mem", "Memory", "bytes"], ["diskread", "Disk read", "rate"], ["diskwrite", "Disk write", "rate"], ["netin", "Net in", "rate"], ["netout", "Net out", "rate"]]);
  return { update, dispose: charts.dispose };
}

function consoleTab(body, type, vmid) {
  const r = state.find(`${type}/${vmid}`);
  if (!r || r.status !== "running") {
    body.append(el("p", {}, `The ${KIND[type]} is not running.`), el("button", { class: "primary", onclick: () => power(type, vmid, "start") }, "Start"));
    let was = r && r.status;
    return { update: (now) => { if (now && now.status === "running" && was !== "running") { was = "running"; window.dispatchEvent(new HashChangeEvent("hashchange")); } } };
  }
  if (type === "lxc") return terminalConsole(body, r.node, vmid);
  // A VM: its screen, or its serial port when it has one (`serial0: socket`).
  let inner = null;
  const pane = el("div");
  const pick = el("div", { class: "toolbar", role: "group", "aria-label": "Console kind" });
  body.append(pick, pane);
  const show = (kind) => {
    if (inner && inner.dispose) inner.dispose();
    pane.replaceChildren();
    inner = kind === "vnc" ? vncConsole(pane, r.node, vmid) : terminalConsole(pane, r.node, vmid, kind);
    for (const b of pick.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.kind === kind));
  };
  pick.append(el("button", { "data-kind": "vnc", onclick: () => show("vnc") }, "Screen (noVNC)"));
  call("GET", `/nodes/${encodeURIComponent(r.node)}/qemu/${vmid}/config`).then((cfg) => {
    for (const k of ["serial0", "serial1", "serial2", "serial3"]) {
      if (cfg[k] === "socket") pick.append(el("button", { "data-kind": k, id: `console-${k}`, onclick: () => show(k) }, `Serial terminal (${k})`));
    }
  }).catch(() => {});
  show("vnc");
  return { dispose: () => { if (inner && inner.dispose) inner.dispose(); } };
}

// Proxmox's view of a config: each key with its current value and, where a change
// waits for the next start, the pending value (or its deletion).
function configTab(body, type, vmid) {
  const table = el("table", { id: "config" }, el("thead", {}, el("tr", {}, ["Key", "Value", "Pending", ""].map((h) => el("th", {}, h)))), el("tbody"));
  const note = el("p", { class: "muted" }, "Changes a running guest cannot take at once stay pending until its next start, as in Proxmox.");
  const add = el("form", { class: "toolbar", id: "add-key" },
    el("input", { name: "key", placeholder: "Key (tags, description, onboot…)", "aria-label": "New key" }),
    el("input", { name: "value", placeholder: "Value", "aria-label": "Its value" }),
    el("button", { type: "submit" }, "Set"));
  add.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(add).entries());
    attempt(async () => { await call("PUT", `${base()}/config`, { [v.key]: v.value }); add.reset(); await load(); });
  });
  body.append(note, add, table);
  let editing = null;
  const base = () => `/nodes/${encodeURIComponent(nodeOf(type, vmid))}/${type}/${vmid}`;
  const load = async () => {
    if (editing) return;
    const rows = await call("GET", `${base()}/pending`);
    const tbody = table.querySelector("tbody");
    tbody.replaceChildren(...rows.filter((row) => row.key !== "digest").map((row) => {
      const pending = row.pending !== undefined || row.delete;
      return el("tr", { "data-key": row.key, class: pending ? "pending" : null },
        el("td", { class: "key" }, row.key),
        el("td", { class: row.delete ? "value deleted" : "value" }, row.value === undefined ? "" : String(row.value)),
        el("td", { class: "pending-value" }, row.delete ? "(delete)" : row.pending === undefined ? "" : String(row.pending)),
        el("td", {},
          el("button", { class: "link", "aria-label": `Edit ${row.key}`, onclick: () => edit(row) }, "Edit"),
          pending ? el("button", { class: "link", "aria-label": `Revert ${row.key}`, onclick: () => revert(row.key) }, "Revert") : null));
    }));
  };
  const edit = (row) => {
    editing = row.key;
    const tr = table.querySelector(`tr[data-key="${CSS.escape(row.key)}"]`);
    const input = el("input", { name: row.key, value: String(row.pending ?? row.value ?? ""), "aria-label": `New value of ${row.key}` });
    const save = async () => {
      const ok = await attempt(async () => {
        await call("PUT", `${base()}/config`, { [row.key]: input.value });
        return true;
      });
      if (ok) { editing = null; toast(`${row.key} saved`, "info"); await load(); }
    };
    input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") save(); if (ev.key === "Escape") { editing = null; load(); } });
    tr.replaceChildren(el("td", { class: "key" }, row.key), el("td", { class: "edit-row", colspan: "2" }, input),
      el("td", {}, el("button", { class: "primary", onclick: save }, "Save"), " ", el("button", { onclick: () => { editing = null; load(); } }, "Cancel")));
    input.focus();
    input.select();
  };
  const revert = (key) => attempt(async () => { await call("PUT", `${base()}/config`, { revert: key }); await load(); });
  attempt(load);
  const timer = setInterval(() => load().catch(() => {}), 3000);
  return { dispose: () => clearInterval(timer) };
}

// Snapshots as the API lists them (a tree ending in "current"), each a task to create,
// roll back or delete.
function snapshotsTab(body, type, vmid) {
  const base = () => `/nodes/${encodeURIComponent(nodeOf(type, vmid))}/${type}/${vmid}/snapshot`;
  const list = el("div");
  const form = el("form", { class: "toolbar", id: "take-snapshot" },
    el("input", { name: "snapname", placeholder: "Name", "aria-label": "Snapshot name", required: true }),
    el("input", { name: "description", placeholder: "Description", "aria-label": "Description" }),
    el("button", { type: "submit", class: "primary" }, "Take snapshot"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(form).entries());
    attempt(async () => { follow(await call("POST", base(), v)); form.reset(); });
  });
  body.append(form, list);
  const act = (method, path, params) => attempt(async () => { follow(await call(method, path, params)); });
  const load = async () => {
    const snaps = await call("GET", base());
    list.replaceChildren(el("table", { id: "snapshots" }, el("thead", {}, el("tr", {}, ["Name", "Parent", "Taken", "Description", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, snaps.map((sn) => el("tr", { "data-snap": sn.name },
        el("td", {}, sn.name === "current" ? "NOW (current state)" : sn.name), el("td", {}, sn.parent || ""),
        el("td", {}, sn.snaptime ? new Date(sn.snaptime * 1000).toLocaleString() : ""), el("td", {}, sn.description || ""),
        el("td", {}, sn.name === "current" ? "" : [
          el("button", { class: "link", onclick: () => { if (confirm(`Roll back to ${sn.name}?`)) act("POST", `${base()}/${encodeURIComponent(sn.name)}/rollback`); } }, "Rollback"),
          el("button", { class: "link danger", onclick: () => { if (confirm(`Delete snapshot ${sn.name}?`)) act("DELETE", `${base()}/${encodeURIComponent(sn.name)}`); } }, "Delete"),
        ]))))));
  };
  attempt(load);
  const timer = setInterval(() => load().catch(() => {}), 3000);
  return { dispose: () => clearInterval(timer) };
}
