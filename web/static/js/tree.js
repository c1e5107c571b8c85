// The resource tree: datacenter → nodes → guests and storages (or by type, by tag).
// Rebuilt from /cluster/resources on each refresh, keeping open/closed groups.
"use strict";
import { el } from "./api.js";

const open = new Map(); // group key -> open?
let lastSig = "";

function label(r) {
  if (r.type === "node") return r.node;
  if (r.type === "storage") return `${r.storage} (${r.node})`;
  return `${r.vmid} (${r.name || ""})`;
}

export function href(r) {
  if (r.type === "node") return `#/node/${encodeURIComponent(r.node)}`;
  if (r.type === "storage") return `#/storage/${encodeURIComponent(r.node)}/${encodeURIComponent(r.storage)}`;
  return `#/guest/${r.type}/${r.vmid}`;
}

function item(r) {
  const kind = r.type === "lxc" ? "CT" : r.type === "qemu" ? "VM" : r.type === "storage" ? "storage" : "node";
  const text = [label(r), r.node, r.vmid, r.name, r.tags, r.type, kind].filter(Boolean).join(" ").toLowerCase();
  return el("li", {},
    el("a", { href: href(r), "data-id": r.id, "data-search": text, title: `${kind} ${label(r)} · ${r.status || ""}` },
      el("span", { class: `dot ${r.status || "unknown"}`, "aria-hidden": "true" }),
      el("span", { class: "kind" }, kind),
      el("span", {}, label(r))));
}

function group(key, title, children, href_) {
  if (!open.has(key)) open.set(key, true);
  const d = el("details", { "data-group": key }, el("summary", {}, href_ ? el("a", { href: href_, "data-id": key, "data-search": title.toLowerCase(), style: null }, title) : title),
    el("ul", {}, children));
  d.open = open.get(key);
  d.addEventListener("toggle", () => open.set(key, d.open));
  return el("li", {}, d);
}

const byVmid = (a, b) => (a.vmid || 0) - (b.vmid || 0);

export function renderTree(root, resources, mode, force, pools) {
  // Cheap: rebuild only when something shown changed (keeps focus while idle).
  const sig = mode + JSON.stringify(resources.map((r) => [r.id, r.status, r.name, r.node, r.tags])) + JSON.stringify(pools || []);
  if (sig === lastSig && !force) return;
  lastSig = sig;
  const focused = document.activeElement && document.activeElement.closest("#tree") ? document.activeElement.getAttribute("data-id") : null;
  const nodes = resources.filter((r) => r.type === "node").sort((a, b) => a.node.localeCompare(b.node));
  const guests = resources.filter((r) => r.type === "lxc" || r.type === "qemu").sort(byVmid);
  const storages = resources.filter((r) => r.type === "storage").sort((a, b) => a.storage.localeCompare(b.storage));
  let body;
  if (mode === "type") {
    body = [
      group("t:node", "Nodes", nodes.map(item)),
      group("t:qemu", "Virtual machines", guests.filter((g) => g.type === "qemu").map(item)),
      group("t:lxc", "Containers", guests.filter((g) => g.type === "lxc").map(item)),
      group("t:storage", "Storage", storages.map(item)),
    ];
  } else if (mode === "pool") {
    const byId = new Map(resources.map((r) => [r.id, r]));
    body = (pools || []).map((p) => group(`pool:${p.poolid}`, p.poolid,
      p.members.map((id) => byId.get(id) || resources.find((r) => r.type === "storage" && id === `storage/${r.storage}`)).filter(Boolean).map(item)));
  } else if (mode === "tag") {
    const tags = new Map();
    for (const g of guests) {
      const list = String(g.tags || "").split(/[;, ]+/).filter(Boolean);
      for (const t of list.length ? list : ["(no tag)"]) {
        if (!tags.has(t)) tags.set(t, []);
        tags.get(t).push(g);
      }
    }
    body = [...tags.keys()].sort().map((t) => group(`tag:${t}`, t, tags.get(t).map(item)));
  } else {
    body = nodes.map((n) => {
      const kids = [...guests.filter((g) => g.node === n.node), ...storages.filter((s) => s.node === n.node)];
      return el("li", {}, el("details", { "data-group": `n:${n.node}`, open: open.get(`n:${n.node}`) !== false },
        el("summary", {}, el("a", { href: href(n), "data-id": n.id, "data-search": `${n.node} node`.toLowerCase(), title: `node ${n.node} · ${n.status}` },
          el("span", { class: `dot ${n.status}`, "aria-hidden": "true" }), el("span", { class: "kind" }, "node"), el("span", {}, n.node))),
        el("ul", {}, kids.map(item))));
    });
    for (const d of body) {
      const det = d.querySelector("details");
      det.addEventListener("toggle", () => open.set(det.dataset.group, det.open));
    }
  }
  const top = el("ul", { role: "list" },
    el("li", {}, el("a", { href: "#/", "data-id": "datacenter", "data-search": "datacenter" }, el("span", { class: "kind" }, "DC"), el("span", {}, "Datacenter"))),
    el("li", {}, el("a", { href: "#/access/users", "data-id": "access", "data-search": "permissions users groups pools tokens acl" },
      el("span", { class: "kind" }, "ACL"), el("span", {}, "Permissions"))),
    body);
  root.replaceChildren(top);
  if (focused) {
    const again = root.querySelector(`[data-id="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

export function filterTree(query) {
  const q = (query || "").trim().toLowerCase();
  for (const a of document.querySelectorAll("#tree a[data-search]")) {
    const li = a.closest("li");
    const hit = !q || a.dataset.search.includes(q);
    li.classList.toggle("hidden-by-search", !hit && !li.querySelector("details"));
    a.classList.toggle("hidden-by-search", !hit);
  }
  if (q) for (const d of document.querySelectorAll("#tree details")) d.open = true;
}

export function markCurrent(hash) {
  for (const a of document.querySelectorAll("#tree a[data-id]")) {
    const cur = a.getAttribute("href") === (hash || "#/") || (hash.startsWith(a.getAttribute("href") + "/") && a.getAttribute("href") !== "#/");
    a.classList.toggle("current", cur);
    if (cur) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}
