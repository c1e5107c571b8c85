// corral web console: talks to the same /api2/json API as every client.
"use strict";
const api = "/api2/json";
let csrf = sessionStorage.getItem("csrf") || "";

async function call(method, path, params) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  let url = api + path;
  if (params && (method === "GET" || method === "DELETE")) url += "?" + new URLSearchParams(params);
  else if (params) { opts.body = new URLSearchParams(params); }
  if (method !== "GET" && csrf) opts.headers.CSRFPreventionToken = csrf;
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({}));
  if (r.status === 401 && path !== "/access/ticket") { showLogin(); throw new Error("login required"); }
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body.data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function showLogin() {
  document.getElementById("app").hidden = true;
  document.getElementById("login").hidden = false;
}

function fmtBytes(n) {
  if (n === undefined) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}

async function action(row, op) {
  const upid = await call("POST", `/nodes/${row.node}/${row.type}/${row.vmid}/status/${op}`);
  showTask(upid);
}

async function loadResources() {
  const rows = await call("GET", "/cluster/resources");
  const tbody = document.querySelector("#resources tbody");
  tbody.replaceChildren();
  for (const r of rows) {
    const name = r.type === "node" ? r.node : r.type === "storage" ? r.storage : (r.name || "");
    const ops = el("td");
    if (r.type === "lxc" || r.type === "qemu") {
      for (const op of r.status === "running" ? ["shutdown", "stop"] : ["start"]) {
        ops.append(el("button", { onclick: () => action(r, op).catch(alert) }, op));
      }
    }
    const mem = r.maxmem ? `${fmtBytes(r.mem)} / ${fmtBytes(r.maxmem)}` : "";
    const cpu = r.cpu !== undefined ? (100 * r.cpu).toFixed(1) + " %" : "";
    tbody.append(el("tr", { "data-id": r.id }, el("td", {}, r.type), el("td", {}, r.id),
      el("td", {}, name), el("td", {}, r.node || ""), el("td", { class: r.status || "" }, r.status || ""),
      el("td", {}, cpu), el("td", {}, mem), ops));
  }
}

let logTimer = null;
async function showTask(upid) {
  switchView("tasks");
  const node = upid.split(":")[1];
  const pre = document.getElementById("tasklog");
  clearInterval(logTimer);
  const poll = async () => {
    const lines = await call("GET", `/nodes/${node}/tasks/${encodeURIComponent(upid)}/log`, { limit: 0 });
    pre.textContent = lines.map((l) => l.t).join("\n");
    const st = await call("GET", `/nodes/${node}/tasks/${encodeURIComponent(upid)}/status`);
    if (st.status === "stopped") { clearInterval(logTimer); loadTasks(); }
  };
  await poll();
  logTimer = setInterval(() => poll().catch(() => clearInterval(logTimer)), 500);
}

async function loadTasks() {
  const rows = await call("GET", "/cluster/tasks");
  const tbody = document.querySelector("#tasks tbody");
  tbody.replaceChildren();
  for (const t of rows.slice(0, 200)) {
    tbody.append(el("tr", { class: "task", onclick: () => showTask(t.upid) },
      el("td", {}, new Date(t.starttime * 1000).toLocaleString()), el("td", {}, t.node),
      el("td", {}, t.type), el("td", {}, t.id), el("td", {}, t.user), el("td", {}, t.status || "running")));
  }
}

function switchView(view) {
  for (const b of document.querySelectorAll("nav button[data-view]")) b.classList.toggle("on", b.dataset.view === view);
  document.getElementById("resources").hidden = view !== "resources";
  document.getElementById("tasks").hidden = view !== "tasks";
  (view === "tasks" ? loadTasks : loadResources)().catch(() => {});
}

async function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("who").textContent = sessionStorage.getItem("user") || "";
  const status = await call("GET", "/cluster/status").catch(() => null);
  if (status) document.getElementById("cluster").textContent = `cluster ${status[0].name} · ${status[0].quorate ? "quorate" : "NOT quorate"}`;
  await loadResources();
  setInterval(() => { if (!document.getElementById("resources").hidden) loadResources().catch(() => {}); }, 2000);
}

document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  try {
    const data = await call("POST", "/access/ticket", { username: form.get("username"), password: form.get("password") });
    document.cookie = `PVEAuthCookie=${encodeURIComponent(data.ticket)}; path=/; secure; samesite=strict`;
    csrf = data.CSRFPreventionToken;
    sessionStorage.setItem("csrf", csrf);
    sessionStorage.setItem("user", data.username);
    document.getElementById("login-error").textContent = "";
    await start();
  } catch (e) { document.getElementById("login-error").textContent = e.message; }
});
document.getElementById("logout").addEventListener("click", () => {
  document.cookie = "PVEAuthCookie=; path=/; max-age=0";
  sessionStorage.clear(); csrf = ""; showLogin();
});
for (const b of document.querySelectorAll("nav button[data-view]")) b.addEventListener("click", () => switchView(b.dataset.view));
(csrf ? start() : Promise.reject()).catch(showLogin);
