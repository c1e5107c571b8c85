// The migrate dialog: the target nodes the API allows (GET .../migrate, as Proxmox's
// dialog asks), the mode a running guest moves in, and the API's reasons for the others.
"use strict";
import { call, el, attempt, toast } from "./api.js";

export function migrateDialog(type, vmid, r, act) {
  const base = `/nodes/${encodeURIComponent(r.node)}/${type}/${vmid}/migrate`;
  const kind = type === "lxc" ? "CT" : "VM";
  const running = r.status === "running";
  const target = el("select", { name: "target", "aria-label": "Target node", required: true });
  const why = el("ul", { class: "muted", id: "migrate-why" });
  const disks = el("p", { class: "muted", id: "migrate-disks" });
  const go = el("button", { type: "submit", class: "primary", id: "migrate-go", disabled: true }, "Migrate");
  const form = el("form", { method: "dialog" },
    el("h2", {}, `Migrate ${kind} ${vmid} from ${r.node}`),
    el("label", {}, "Target node ", target),
    el("p", { class: "muted" }, running
      ? (type === "qemu" ? "Running: moved live (online), its memory copied while it runs." : "Running: stopped here, moved, and started on the target (restart mode).")
      : "Stopped: its configuration and disks move, it stays stopped."),
    disks, why,
    el("div", { class: "toolbar" }, go, el("button", { type: "button", id: "migrate-cancel", onclick: () => dlg.close() }, "Cancel")));
  const dlg = el("dialog", { id: "migrate-dialog", "aria-label": `Migrate ${kind} ${vmid}` }, form);
  dlg.addEventListener("close", () => dlg.remove());
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const live = running ? (type === "qemu" ? { online: 1 } : { restart: 1 }) : {};
    dlg.close();
    act("POST", base, { target: target.value, ...live });
  });
  document.body.append(dlg);
  dlg.showModal();
  attempt(async () => {
    const pre = await call("GET", base);
    target.replaceChildren(...pre.allowed_nodes.map((n) => el("option", { value: n }, n)));
    go.disabled = !pre.allowed_nodes.length;
    if (!pre.allowed_nodes.length) toast(`No node can take ${kind} ${vmid} now.`);
    why.replaceChildren(...Object.entries(pre.not_allowed_nodes || {}).map(([n, v]) =>
      el("li", {}, `${n}: storage ${(v.unavailable_storages || []).join(", ")} is not there`)));
    const local = (pre.local_disks || []).map((d) => d.volid);
    disks.textContent = local.length ? `Local disks, copied to the target: ${local.join(", ")}` : "";
  });
}
