// Create a container: the steps Proxmox users know, one POST /nodes/{node}/lxc at the end.
"use strict";
import { call, el, attempt, toast, ApiError } from "./api.js";
import { state } from "./main.js";
import { follow } from "./tasks.js";

const STEPS = {
  lxc: ["General", "Template", "Root disk", "CPU & memory", "Network", "Confirm"],
  qemu: ["General", "OS", "Disk", "CPU & memory", "Network", "Cloud-Init", "Confirm"],
};

function field(label, input) {
  return el("label", {}, el("span", {}, label), input);
}

export function wizardPage(main, type = "lxc") {
  const nodes = state.resources.filter((r) => r.type === "node" && r.status === "online").map((r) => r.node).sort();
  const v = { node: nodes[0] || "", vmid: "", hostname: "", name: "", password: "", ostemplate: "", iso: "", storage: "", size: type === "lxc" ? "1" : "8",
    cores: "1", memory: type === "lxc" ? "256" : "1024", swap: "0", bridge: "", ip: "dhcp", kvm: true, start: type === "lxc",
    ci: false, ciuser: "", cipassword: "", sshkeys: "", ciip: "dhcp", cigw: "", nameserver: "", searchdomain: "" };
  const STEPS_ = STEPS[type];
  const kindName = type === "lxc" ? "container" : "virtual machine";
  let step = 0;
  const steps = el("ol", { class: "steps", "aria-label": "Steps" });
  const form = el("form", { novalidate: true, "aria-live": "polite" });
  const error = el("p", { class: "error", role: "alert", id: "wizard-error" });
  main.append(el("div", { class: "wizard" }, el("h1", {}, `Create a ${kindName}`), steps, form, error));
  call("GET", "/cluster/nextid").then((id) => { if (!v.vmid) { v.vmid = String(id); if (step === 0) show(); } }).catch(() => {});

  const input = (name, attrs) => {
    const i = el("input", { name, value: v[name], ...attrs });
    i.addEventListener("input", () => { v[name] = i.type === "checkbox" ? i.checked : i.value; });
    if (attrs && attrs.type === "checkbox") { i.checked = !!v[name]; i.addEventListener("change", () => { v[name] = i.checked; }); }
    return i;
  };
  const select = (name, options) => {
    const s = el("select", { name }, options.map(([value, text]) => el("option", { value, selected: value === v[name] }, text)));
    if (!options.some(([value]) => value === v[name]) && options.length) v[name] = options[0][0];
    s.addEventListener("change", () => { v[name] = s.value; });
    return s;
  };
  const storagesWith = async (content) => {
    const rows = await call("GET", `/nodes/${encodeURIComponent(v.node)}/storage`, { content, enabled: 1 });
    return rows.map((s) => s.storage).sort();
  };

  async function page() {
    if (type === "qemu") return vmPage();
    switch (step) {
      case 0: return [
        field("Node", select("node", nodes.map((n) => [n, n]))),
        field("CT ID", input("vmid", { inputmode: "numeric", required: true })),
        field("Hostname", input("hostname", { placeholder: "optional" })),
        field("Root password", input("password", { type: "password", autocomplete: "new-password", placeholder: "optional" })),
      ];
      case 1: {
        const templates = [];
        for (const s of await storagesWith("vztmpl")) {
          const rows = await call("GET", `/nodes/${encodeURIComponent(v.node)}/storage/${encodeURIComponent(s)}/content`, { content: "vztmpl" });
          for (const t of rows) templates.push([t.volid, t.volid]);
        }
        if (!templates.length) return [el("p", { class: "error" }, `No container template on ${v.node}: build one with "corral template build busybox" or upload one.`)];
        return [field("Template", select("ostemplate", templates))];
      }
      case 2: {
        const stores = await storagesWith("rootdir");
        return [field("Storage", select("storage", stores.map((s) => [s, s]))), field("Size (GiB)", input("size", { inputmode: "decimal" }))];
      }
      case 3: return [field("Cores", input("cores", { inputmode: "numeric" })), field("Memory (MiB)", input("memory", { inputmode: "numeric" })),
        field("Swap (MiB)", input("swap", { inputmode: "numeric" }))];
      case 4: return [field("Bridge", input("bridge", { placeholder: "none (no network)" })), field("IPv4", input("ip", { placeholder: "dhcp or 10.0.0.5/24" }))];
      default: return [
        el("table", { id: "wizard-summary" }, el("tbody", {}, Object.entries(params()).map(([k, val]) => el("tr", {}, el("th", {}, k), el("td", {}, k === "password" ? "••••" : String(val)))))),
        field("Start after created", input("start", { type: "checkbox" })),
      ];
    }
  }

  async function vmPage() {
    switch (step) {
      case 0: return [
        field("Node", select("node", nodes.map((n) => [n, n]))),
        field("VM ID", input("vmid", { inputmode: "numeric", required: true })),
        field("Name", input("name", { placeholder: "optional" })),
      ];
      case 1: {
        const isos = [["", "No media"]];
        for (const s of await storagesWith("iso")) {
          const rows = await call("GET", `/nodes/${encodeURIComponent(v.node)}/storage/${encodeURIComponent(s)}/content`, { content: "iso" });
          for (const t of rows) isos.push([t.volid, t.volid]);
        }
        return [field("CD/DVD image", select("iso", isos))];
      }
      case 2: {
        const stores = await storagesWith("images");
        return [field("Storage", select("storage", stores.map((s) => [s, s]))), field("Disk size (GiB)", input("size", { inputmode: "decimal" }))];
      }
      case 3: {
        const status = await call("GET", `/nodes/${encodeURIComponent(v.node)}/status`).catch(() => ({}));
        const hvm = !!(status.cpuinfo || {}).hvm;
        if (!hvm) v.kvm = false;
        return [field("Cores", input("cores", { inputmode: "numeric" })), field("Memory (MiB)", input("memory", { inputmode: "numeric" })),
          field(hvm ? "Hardware virtualisation (KVM)" : "KVM (not on this node: TCG emulation)", input("kvm", { type: "checkbox", disabled: !hvm }))];
      }
      case 4: return [field("Bridge", input("bridge", { placeholder: "none (no network)" }))];
      case 5: return cloudInitPage();
      default: return [
        el("table", { id: "wizard-summary" }, el("tbody", {}, Object.entries(params()).map(([k, val]) => el("tr", {}, el("th", {}, k),
          el("td", {}, k === "cipassword" ? "••••" : k === "sshkeys" ? `${decodeURIComponent(val).split("\n").filter((l) => l.trim()).length} key(s)` : String(val)))))),
        field("Start after created", input("start", { type: "checkbox" })),
      ];
    }
  }

  // cloud-init (kvm/cloudinit.py builds the NoCloud seed from these keys at each start):
  // a user, a password and/or SSH keys, the first NIC's address and DNS.
  function cloudInitPage() {
    const keys = el("textarea", { name: "sshkeys", rows: "3", placeholder: "ssh-ed25519 AAAA… (one per line)" }, v.sshkeys);
    keys.addEventListener("input", () => { v.sshkeys = keys.value; });
    const rows = [
      field("Add a cloud-init drive", input("ci", { type: "checkbox" })),
      field("User", input("ciuser", { placeholder: "default user of the image", autocomplete: "off" })),
      field("Password", input("cipassword", { type: "password", autocomplete: "new-password", placeholder: "optional" })),
      field("SSH public keys", keys),
      field("DNS servers", input("nameserver", { placeholder: "e.g. 10.0.0.1 10.0.0.2" })),
      field("DNS search domain", input("searchdomain", { placeholder: "optional" })),
    ];
    if (v.bridge) {
      rows.splice(4, 0, field("IPv4 of net0", input("ciip", { placeholder: "dhcp or 10.0.0.5/24" })),
        field("IPv4 gateway", input("cigw", { placeholder: "optional, e.g. 10.0.0.1" })));
    } else {
      rows.splice(4, 0, el("p", { class: "muted" }, "No network device (step 5): no IP configuration."));
    }
    return rows;
  }

  function cloudInitParams(p) {
    if (!v.ci) return;
    p[v.iso ? "ide0" : "ide2"] = `${v.storage}:cloudinit`;
    if (v.ciuser) p.ciuser = v.ciuser;
    if (v.cipassword) p.cipassword = v.cipassword;
    if (v.sshkeys.trim()) p.sshkeys = encodeURIComponent(v.sshkeys.trim()); // URL-encoded, as Proxmox
    if (v.bridge && v.ciip) p.ipconfig0 = v.ciip === "dhcp" ? "ip=dhcp" : `ip=${v.ciip}${v.cigw ? `,gw=${v.cigw}` : ""}`;
    if (v.nameserver) p.nameserver = v.nameserver;
    if (v.searchdomain) p.searchdomain = v.searchdomain;
  }

  function vmParams() {
    const p = { vmid: v.vmid, memory: v.memory, cores: v.cores, scsi0: `${v.storage}:${v.size}`, kvm: v.kvm ? 1 : 0 };
    if (v.name) p.name = v.name;
    if (v.iso) p.ide2 = `${v.iso},media=cdrom`;
    if (v.bridge) p.net0 = `virtio,bridge=${v.bridge}`;
    cloudInitParams(p);
    return p;
  }

  function params() {
    if (type === "qemu") return vmParams();
    const p = { vmid: v.vmid, ostemplate: v.ostemplate, rootfs: `${v.storage}:${v.size}`, cores: v.cores, memory: v.memory, swap: v.swap };
    if (v.hostname) p.hostname = v.hostname;
    if (v.password) p.password = v.password;
    if (v.bridge) p.net0 = `name=eth0,bridge=${v.bridge}${v.ip ? `,ip=${v.ip}` : ""}`;
    return p;
  }

  async function show() {
    steps.replaceChildren(...STEPS_.map((s, i) => el("li", { class: i === step ? "on" : null, "aria-current": i === step ? "step" : null }, `${i + 1}. ${s}`)));
    let fields;
    try {
      fields = await page();
    } catch (e) {
      fields = [el("p", { class: "error" }, e instanceof ApiError ? e.detail : String(e.message))];
    }
    const back = el("button", { type: "button", disabled: step === 0, onclick: () => { step--; show(); } }, "Back");
    const next = step < STEPS_.length - 1
      ? el("button", { type: "submit", class: "primary", id: "wizard-next" }, "Next")
      : el("button", { type: "submit", class: "primary", id: "wizard-create" }, "Create");
    form.replaceChildren(el("fieldset", {}, el("legend", {}, STEPS_[step]), fields), el("div", { class: "nav" }, back, next));
    const first = form.querySelector("input, select");
    if (first) first.focus();
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    if (step < STEPS_.length - 1) {
      if (step === 0 && !/^\d+$/.test(v.vmid)) { error.textContent = "vmid: a number is required"; return; }
      step++;
      show();
      return;
    }
    const p = params();
    if (v.start) p.start = 1;
    try {
      const upid = await call("POST", `/nodes/${encodeURIComponent(v.node)}/${type}`, p);
      follow(upid);
      toast(`Creating ${type === "lxc" ? "CT" : "VM"} ${v.vmid}…`, "info");
      location.hash = `#/guest/${type}/${v.vmid}`;
    } catch (e) {
      // The API's own message, with each bad parameter named.
      error.textContent = e instanceof ApiError ? e.detail : String(e.message);
    }
  });
  show();
  return { update: () => {} };
}

export { attempt };
