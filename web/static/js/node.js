// A node's services, network interfaces and log (the node page's tabs).
"use strict";
import { call, el, attempt, fmtUptime, ApiError } from "./api.js";
import { follow } from "./tasks.js";

export const NODE_TABS = { summary: "Summary", services: "Services", network: "Network", syslog: "Syslog", shell: "Shell" };

export function nodeTabs(node, tab) {
  return el("nav", { class: "tabs", "aria-label": "Node pages" },
    Object.entries(NODE_TABS).map(([t, label]) => el("a", { href: `#/node/${encodeURIComponent(node)}${t === "summary" ? "" : `/${t}`}`,
      id: `node-tab-${t}`, "aria-current": t === (tab || "summary") ? "page" : null }, label)));
}

function failed(box, e) {
  box.replaceChildren(el("p", { class: "error" }, e instanceof ApiError ? e.detail : String(e.message || e)));
}

// What corral runs and the host runs; restart is offered where the API offers it.
export function servicesTab(body, node) {
  const base = `/nodes/${encodeURIComponent(node)}/services`;
  const box = el("div");
  body.append(el("p", { class: "muted" }, "What this node really runs (no systemd is needed): corral's own daemons and the host's services."), box);
  const load = async () => {
    try {
      const rows = await call("GET", base);
      box.replaceChildren(el("table", { id: "services" }, el("thead", {}, el("tr", {}, ["Service", "Description", "State", "PID", "Uptime", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows.map((s) => el("tr", { "data-service": s.service },
          el("td", {}, s.service), el("td", {}, s.desc), el("td", { class: s.state === "running" ? "running" : "stopped" }, s.state),
          el("td", {}, s.pid ? String(s.pid) : ""), el("td", {}, s.uptime !== undefined ? fmtUptime(s.uptime) : ""),
          el("td", {}, (s.actions || []).filter((a) => a === "restart").map((a) => el("button", {
            "aria-label": `${a} ${s.service}`, onclick: () => attempt(async () => { follow(await call("POST", `${base}/${encodeURIComponent(s.service)}/${a}`)); setTimeout(load, 1500); }),
          }, "Restart"))))))));
    } catch (e) { failed(box, e); }
  };
  load();
  const timer = setInterval(load, 5000);
  return { dispose: () => clearInterval(timer) };
}

export function networkTab(body, node) {
  const box = el("div");
  body.append(el("p", { class: "muted" }, "The interfaces as the kernel has them (read-only: corral does not edit the host's network configuration)."), box);
  attempt(async () => {
    try {
      const rows = await call("GET", `/nodes/${encodeURIComponent(node)}/network`);
      box.replaceChildren(el("table", { id: "network" }, el("thead", {}, el("tr", {}, ["Name", "Type", "Active", "Ports/Slaves", "IPv4", "Gateway", "IPv6", "MTU"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows.map((n) => el("tr", { "data-iface": n.iface },
          el("td", {}, n.iface), el("td", {}, n.type === "unknown" && n["link-type"] ? n["link-type"] : n.type),
          el("td", { class: n.active ? "running" : "stopped" }, n.active ? "yes" : "no"),
          el("td", {}, n.bridge_ports || n.slaves || n["vlan-raw-device"] || ""), el("td", {}, n.cidr || ""),
          el("td", {}, n.gateway || ""), el("td", {}, n.cidr6 || ""), el("td", {}, n.mtu ? String(n.mtu) : ""))))));
    } catch (e) { failed(box, e); }
  });
  return {};
}

// The node's log (corrald, its etcd, libvirtd, the host's syslog), newest at the
// bottom; "Follow" polls the journal from its end cursor, so only new lines travel.
export function syslogTab(body, node) {
  const base = `/nodes/${encodeURIComponent(node)}`;
  const pre = el("pre", { id: "syslog", class: "log", tabindex: "0", "aria-label": "Node log" });
  const source = el("select", { name: "service", "aria-label": "Source" }, [["", "All sources"], ["corrald", "corrald"], ["etcd", "etcd"], ["libvirtd", "libvirtd"], ["syslog", "host syslog"]].map(([v, t]) => el("option", { value: v }, t)));
  const since = el("input", { type: "date", name: "since", "aria-label": "Since (date)" });
  const followBox = el("input", { type: "checkbox", name: "follow", checked: true });
  const form = el("form", { class: "toolbar", id: "syslog-filter" }, source, since, el("label", {}, followBox, " Follow"), el("button", { type: "submit" }, "Show"));
  body.append(form, pre);
  let cursor = null;
  const atEnd = () => pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  const show = async () => {
    const params = { limit: 500 };
    if (source.value) params.service = source.value;
    if (since.value) { params.since = since.value; params.start = 0; }
    try {
      const rows = await call("GET", `${base}/syslog`, params);
      pre.textContent = rows.map((r) => r.t).join("\n");
      pre.scrollTop = pre.scrollHeight;
      const j = await call("GET", `${base}/journal`, { lastentries: 0 });
      cursor = j.length ? j[j.length - 1] : null;
    } catch (e) { pre.textContent = e instanceof ApiError ? e.detail : String(e.message); }
  };
  const poll = async () => {
    if (!followBox.checked || !cursor || source.value || since.value || document.hidden) return;
    const j = await call("GET", `${base}/journal`, { startcursor: cursor }).catch(() => null);
    if (!j || j.length < 2) return;
    cursor = j[j.length - 1];
    const fresh = j.slice(1, -1);
    if (!fresh.length) return;
    const stick = atEnd();
    pre.textContent += (pre.textContent ? "\n" : "") + fresh.join("\n");
    if (stick) pre.scrollTop = pre.scrollHeight;
  };
  form.addEventListener("submit", (ev) => { ev.preventDefault(); show(); });
  show();
  const timer = setInterval(poll, 2000);
  return { dispose: () => clearInterval(timer) };
}

// A storage's "Download from URL": POST .../download-url, then its task's progress.
export function downloadForm(base, done) {
  const progress = el("progress", { max: "100", value: "0", hidden: true, id: "download-progress", "aria-label": "Download progress" });
  const form = el("form", { class: "toolbar", id: "download-url" },
    el("input", { name: "url", type: "url", placeholder: "https://…/image.iso", "aria-label": "URL to download", required: true, size: "34" }),
    el("input", { name: "filename", placeholder: "file name", "aria-label": "File name", required: true }),
    el("select", { name: "content", "aria-label": "Content type" }, el("option", { value: "iso" }, "ISO image"), el("option", { value: "vztmpl" }, "Container template")),
    el("select", { name: "checksum-algorithm", "aria-label": "Checksum algorithm" }, el("option", { value: "" }, "no checksum"),
      ["sha256", "sha512", "sha1", "md5"].map((a) => el("option", { value: a }, a))),
    el("input", { name: "checksum", placeholder: "checksum", "aria-label": "Expected checksum" }),
    el("button", { type: "submit" }, "Download from URL"), progress);
  // The file name follows the URL's last part until the user types one.
  const name = form.querySelector("input[name=filename]");
  form.querySelector("input[name=url]").addEventListener("input", (ev) => {
    if (!name.dataset.typed) name.value = decodeURIComponent(ev.target.value.split(/[?#]/)[0].split("/").pop() || "");
  });
  name.addEventListener("input", () => { name.dataset.typed = "1"; });
  form.addEventListener("submit", (ev) => attempt(async () => {
    ev.preventDefault();
    const params = Object.fromEntries([...new FormData(form)].filter(([, v]) => v !== ""));
    const upid = await call("POST", `${base}/download-url`, params);
    follow(upid);
    progress.hidden = false;
    progress.value = "0";
    const node = upid.split(":")[1];
    const watch = async () => {
      const st = await call("GET", `/nodes/${node}/tasks/${encodeURIComponent(upid)}/status`).catch(() => null);
      if (st && st.progress !== undefined) progress.value = String(Math.round(100 * st.progress));
      if (st && st.status === "stopped") {
        progress.hidden = true;
        if (st.exitstatus === "OK") { form.reset(); delete name.dataset.typed; }
        done();
        return;
      }
      setTimeout(watch, 500);
    };
    watch();
  }));
  return form;
}
