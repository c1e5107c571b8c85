// corral console: login, live cluster state, the resource tree, search and routing.
"use strict";
import { call, session, login, loginTfa, logout, el, attempt } from "./api.js";
import { tasks } from "./tasks.js";
import { renderTree, filterTree, markCurrent } from "./tree.js";
import { datacenterPage, nodePage, storagePage } from "./pages.js";
import { guestPage } from "./guest.js";
import { wizardPage } from "./wizard.js";
import { accessPage } from "./access.js";

const REFRESH_MS = 1500; // live state: one cheap range read of /cluster/resources

export const state = {
  resources: [],
  pools: [],
  pushed: false,
  status: null,
  listeners: new Set(),
  find(id) { return this.resources.find((r) => r.id === id); },
};

let timer = null;
let poolsAt = 0;

// Pool memberships for the "by pool" tree, re-read every 10 s (pools change rarely).
async function loadPools(now) {
  if (!now && Date.now() - poolsAt < 10000) return;
  poolsAt = Date.now();
  const pools = await call("GET", "/pools").catch(() => []);
  state.pools = await Promise.all(pools.map(async (p) => {
    const [full] = await call("GET", "/pools", { poolid: p.poolid }).catch(() => [{}]);
    return { poolid: p.poolid, members: (full && full.members || []).map((m) => m.id) };
  }));
}
let view = null; // { update(), dispose() } of the page shown
let treeMode = localStorage.getItem("tree") || "server";

async function refresh() {
  const [resources, status] = await Promise.all([
    call("GET", "/cluster/resources"),
    call("GET", "/cluster/status").catch(() => null),
  ]);
  await show(resources, status);
}

// Live state is pushed by /cluster/feed (a WebSocket) as soon as it changes; while
// the feed is down the page polls instead, and reconnects every few seconds.
let feed = null;
let feedRetry = null;
function openFeed() {
  clearTimeout(feedRetry);
  if (!session.csrf) return;
  const ws = new WebSocket(`wss://${location.host}/api2/json/cluster/feed`);
  feed = ws;
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.tasks) tasks.render(msg.tasks);
    if (msg.resources || msg.status) show(msg.resources || state.resources, msg.status || state.status).catch(() => {});
  };
  ws.onopen = () => { state.pushed = true; tasks.pushed = true; document.body.dataset.live = "push"; };
  ws.onclose = () => {
    if (feed !== ws) return;
    state.pushed = false;
    tasks.pushed = false;
    document.body.dataset.live = "poll";
    feed = null;
    if (session.csrf) feedRetry = setTimeout(openFeed, 3000);
  };
}
function closeFeed() {
  clearTimeout(feedRetry);
  if (feed) { const ws = feed; feed = null; ws.close(); }
  state.pushed = false;
  tasks.pushed = false;
}

async function show(resources, status) {
  state.resources = resources;
  state.status = status;
  if (treeMode === "pool") await loadPools();
  const head = status && status.find((s) => s.type === "cluster");
  const nodes = resources.filter((r) => r.type === "node").length;
  const online = resources.filter((r) => r.type === "node" && r.status === "online").length;
  document.getElementById("cluster").textContent = head
    ? `${head.name} · ${head.quorate ? "quorate" : "NOT quorate"} · ${online} of ${nodes} nodes online`
    : "";
  renderTree(document.getElementById("tree"), resources, treeMode, false, state.pools);
  filterTree(document.getElementById("search").value);
  markCurrent(location.hash);
  if (view && view.update) view.update();
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    if (!document.hidden && !state.pushed) await refresh().catch(() => {});
    if (session.csrf) schedule();
  }, REFRESH_MS);
}

function route() {
  if (!session.csrf) return;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (view && view.dispose) view.dispose();
  const main = document.getElementById("content");
  main.replaceChildren();
  const [what, a, b, c] = parts;
  if (what === "node" && a) view = nodePage(main, a, b);
  else if (what === "guest" && a && b) view = guestPage(main, a, Number(b), c || "summary");
  else if (what === "storage" && a && b) view = storagePage(main, a, b);
  else if (what === "create" && (a === "lxc" || a === "qemu")) view = wizardPage(main, a);
  else if (what === "access") view = accessPage(main, a);
  else view = datacenterPage(main);
  markCurrent(location.hash);
  document.getElementById("side").classList.remove("open");
  document.getElementById("menu").setAttribute("aria-expanded", "false");
}

function showLogin() {
  clearTimeout(timer);
  if (view && view.dispose) view.dispose();
  view = null;
  tasks.stop();
  closeFeed();
  document.getElementById("app").hidden = true;
  for (const id of ["search", "create-ct", "create-vm", "logout"]) document.getElementById(id).hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("cluster").textContent = "";
  document.getElementById("login").hidden = false;
  document.querySelector("#login input[name=password]").focus();
  loadRealms();
}

// The realms a user may log in to (a public call, as in Proxmox), the default one chosen.
async function loadRealms() {
  const select = document.querySelector("#login select[name=realm]");
  const realms = await call("GET", "/access/domains").catch(() => null);
  if (!realms) return;
  const chosen = (realms.find((r) => r.default) || {}).realm || select.value || "pve";
  select.replaceChildren(...realms.map((r) => el("option", { value: r.realm }, r.comment ? `${r.comment} (${r.realm})` : r.realm)));
  select.value = chosen;
}

async function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = false;
  for (const id of ["search", "create-ct", "create-vm", "logout"]) document.getElementById(id).hidden = false;
  document.getElementById("who").textContent = session.user;
  await refresh();
  route();
  tasks.start();
  openFeed();
  schedule();
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("theme", theme);
}

function setup() {
  session.onLogout = () => { logout(); showLogin(); };
  applyTheme(localStorage.getItem("theme") || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
  document.getElementById("theme").addEventListener("click", () =>
    applyTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"));
  let challenge = null; // a password was accepted, the one-time code is due
  document.getElementById("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    // "name" logs in to the realm chosen below, "name@realm" to the realm it names.
    const user = String(form.get("username")).includes("@") ? form.get("username") : `${form.get("username")}@${form.get("realm")}`;
    const error = document.getElementById("login-error");
    const otpRow = document.getElementById("otp-row");
    try {
      if (challenge) {
        await loginTfa(user, challenge, form.get("otp"));
      } else {
        const answer = await login(user, form.get("password"));
        if (answer.NeedTFA) {
          challenge = answer.ticket;
          otpRow.hidden = false;
          error.textContent = "";
          otpRow.querySelector("input").focus();
          return;
        }
      }
      challenge = null;
      otpRow.hidden = true;
      error.textContent = "";
      ev.target.reset();
      await start();
    } catch (e) {
      challenge = null;
      otpRow.hidden = true;
      error.textContent = e.message;
    }
  });
  document.getElementById("logout").addEventListener("click", () => { logout(); showLogin(); });
  document.getElementById("create-ct").addEventListener("click", () => { location.hash = "#/create/lxc"; });
  document.getElementById("create-vm").addEventListener("click", () => { location.hash = "#/create/qemu"; });
  document.getElementById("menu").addEventListener("click", (ev) => {
    const side = document.getElementById("side");
    // The drawer starts below the header, whose height depends on the width.
    side.style.top = `${document.querySelector("header.top").getBoundingClientRect().bottom}px`;
    const open = side.classList.toggle("open");
    ev.currentTarget.setAttribute("aria-expanded", String(open));
  });
  const search = document.getElementById("search");
  search.addEventListener("input", () => filterTree(search.value));
  search.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") {
      const first = document.querySelector("#tree a[data-id]:not(.hidden-by-search)");
      if (first) { location.hash = first.getAttribute("href"); first.focus(); }
    } else if (ev.key === "Escape") { search.value = ""; filterTree(""); }
  });
  document.addEventListener("keydown", (ev) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName) || document.activeElement.closest(".xterm, #vnc");
    if (ev.key === "/" && !typing && session.csrf) { ev.preventDefault(); search.focus(); }
  });
  for (const b of document.querySelectorAll("[data-tree]")) {
    b.addEventListener("click", async () => {
      treeMode = b.dataset.tree;
      localStorage.setItem("tree", treeMode);
      for (const o of document.querySelectorAll("[data-tree]")) {
        o.classList.toggle("on", o === b);
        o.setAttribute("aria-pressed", String(o === b));
      }
      if (treeMode === "pool") await loadPools(true);
      renderTree(document.getElementById("tree"), state.resources, treeMode, true, state.pools);
      filterTree(search.value);
      markCurrent(location.hash);
    });
    b.classList.toggle("on", b.dataset.tree === treeMode);
    b.setAttribute("aria-pressed", String(b.dataset.tree === treeMode));
  }
  // The tree by keyboard: arrows move between items, left/right close and open a group.
  document.getElementById("tree").addEventListener("keydown", (ev) => {
    const links = [...document.querySelectorAll("#tree a[data-id]")].filter((a) => a.offsetParent !== null);
    const at = links.indexOf(document.activeElement);
    const group = document.activeElement.closest("details");
    let to = null;
    if (ev.key === "ArrowDown") to = links[Math.min(links.length - 1, at + 1)];
    else if (ev.key === "ArrowUp") to = links[Math.max(0, at - 1)];
    else if (ev.key === "Home") to = links[0];
    else if (ev.key === "End") to = links[links.length - 1];
    else if ((ev.key === "ArrowRight" || ev.key === "ArrowLeft") && group) group.open = ev.key === "ArrowRight";
    else return;
    ev.preventDefault();
    if (to) to.focus();
  });
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => { if (!document.hidden && session.csrf) refresh().catch(() => {}); });
  if (session.csrf) start().catch(showLogin);
  else showLogin();
}

// Shown after an action: refresh at once rather than at the next tick.
export function poke() { return attempt(refresh); }

export { el };
setup();
