// A guest's Backup tab, as Proxmox has it: this guest's archives on the storages that hold
// backups, "Back up now" (vzdump), restore over the guest (it must be stopped) and remove.
// Each is a task, followed in the task panel.
"use strict";
import { call, el, attempt, fmtBytes, fmtTime } from "./api.js";
import { state } from "./main.js";
import { follow } from "./tasks.js";

export function backupTab(body, type, vmid) {
  const node = () => encodeURIComponent((state.find(`${type}/${vmid}`) || {}).node || "");
  const storage = el("select", { name: "storage", "aria-label": "Backup storage" });
  const mode = el("select", { name: "mode", "aria-label": "Backup mode" },
    ["snapshot", "suspend", "stop"].map((m) => el("option", { value: m }, m)));
  const form = el("form", { class: "toolbar", id: "backup-now" },
    el("span", {}, "Storage"), storage, el("span", {}, "Mode"), mode,
    el("button", { type: "submit", class: "primary" }, "Back up now"));
  const list = el("div");
  body.append(form, list);
  const act = (method, path, params) => attempt(async () => { follow(await call(method, path, params)); setTimeout(load, 1500); });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("POST", `/nodes/${node()}/vzdump`, { vmid, storage: storage.value, mode: mode.value });
  });
  const restore = (volid) => {
    if (!confirm(`Restore ${volid} over ${type === "lxc" ? "CT" : "VM"} ${vmid}? Its current disks are replaced.`)) return;
    const from = type === "lxc" ? { ostemplate: volid, restore: 1 } : { archive: volid };
    act("POST", `/nodes/${node()}/${type}`, { vmid, force: 1, ...from });
  };
  const remove = (store, volid) => {
    if (confirm(`Remove the backup ${volid}?`)) act("DELETE", `/nodes/${node()}/storage/${encodeURIComponent(store)}/content/${encodeURIComponent(volid)}`);
  };
  let stores = [];
  const load = async () => {
    const found = await call("GET", `/nodes/${node()}/storage`, { content: "backup", enabled: 1 });
    const names = found.map((s) => s.storage).sort();
    if (names.join() !== stores.join()) {
      stores = names;
      const keep = storage.value;
      storage.replaceChildren(...names.map((s) => el("option", { value: s }, s)));
      if (names.includes(keep)) storage.value = keep;
    }
    const rows = (await Promise.all(names.map((s) => call("GET", `/nodes/${node()}/storage/${encodeURIComponent(s)}/content`, { content: "backup", vmid })
      .then((vols) => vols.map((v) => ({ ...v, store: s }))).catch(() => [])))).flat().sort((a, b) => (b.ctime || 0) - (a.ctime || 0));
    const row = (v) => el("tr", { "data-volid": v.volid },
      el("td", {}, v.volid.split("/").pop()), el("td", {}, v.store), el("td", {}, fmtTime(v.ctime)), el("td", {}, fmtBytes(v.size)),
      el("td", {}, v.notes || ""),
      el("td", {},
        el("button", { class: "link", "aria-label": `Restore ${v.volid}`, onclick: () => restore(v.volid) }, "Restore"), " ",
        v.protected ? el("span", { class: "muted" }, "protected")
          : el("button", { class: "link danger", "aria-label": `Remove ${v.volid}`, onclick: () => remove(v.store, v.volid) }, "Remove")));
    list.replaceChildren(rows.length
      ? el("table", { id: "backups" }, el("thead", {}, el("tr", {}, ["Backup", "Storage", "Date", "Size", "Notes", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows.map(row)))
      : el("p", { class: "muted", id: "backups-none" }, `No backup of ${vmid} yet on ${names.join(", ") || "any storage of this node"}.`));
  };
  attempt(load);
  const timer = setInterval(() => load().catch(() => {}), 5000);
  return { dispose: () => clearInterval(timer) };
}
