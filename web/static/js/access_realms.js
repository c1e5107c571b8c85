// Permissions → Realms: the authentication domains, an LDAP directory added, synced (a
// task, followed in the panel) or removed, through /access/domains as any client would.
"use strict";
import { call, el, attempt, toast } from "./api.js";
import { follow } from "./tasks.js";

export async function realmsTab(body, again) {
  const realms = await call("GET", "/access/domains");
  const details = await Promise.all(realms.map((r) => r.type === "ldap"
    ? call("GET", `/access/domains/${encodeURIComponent(r.realm)}`).catch(() => r) : Promise.resolve(r)));
  const field = (name, label, attrs) => el("input", { name, placeholder: label, "aria-label": label, ...attrs });
  const form = el("form", { class: "toolbar", id: "add-realm" },
    field("realm", "Realm ID", { required: true }), field("server1", "Server", { required: true }),
    field("port", "Port", { type: "number", min: "1", max: "65535" }),
    el("select", { name: "mode", "aria-label": "Protocol" }, ["ldap", "ldaps", "ldap+starttls"].map((m) => el("option", { value: m }, m))),
    field("base_dn", "Base DN (dc=example,dc=org)", { required: true }), field("user_attr", "User attribute (uid)", { required: true }),
    field("bind_dn", "Bind DN"), field("password", "Bind password", { type: "password" }),
    el("button", { type: "submit", class: "primary" }, "Add LDAP realm"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(form).entries());
    const ok = await attempt(async () => { await call("POST", "/access/domains", { type: "ldap", "check-connection": 1, ...v }); return true; });
    if (ok) { toast(`realm ${v.realm} added`, "info"); again(); }
  });
  const sync = (realm) => attempt(async () => {
    follow(await call("POST", `/access/domains/${encodeURIComponent(realm)}/sync`, { scope: "both" }));
  });
  const remove = (realm) => {
    if (confirm(`Remove realm ${realm}? Its users stay, unable to log in.`)) attempt(async () => { await call("DELETE", `/access/domains/${encodeURIComponent(realm)}`); again(); });
  };
  body.replaceChildren(
    el("p", { class: "muted" }, "Users of an LDAP realm log in as name@realm once they exist here (added by hand or by a sync); the directory checks their password."),
    form,
    el("table", { id: "realms" }, el("thead", {}, el("tr", {}, ["Realm", "Type", "Server", "Comment", "Default", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, details.map((r) => el("tr", { "data-realm": r.realm },
        el("td", {}, r.realm), el("td", {}, r.type), el("td", {}, r.server1 ? `${r.mode || "ldap"}://${r.server1}${r.port ? `:${r.port}` : ""}` : ""),
        el("td", {}, r.comment || ""), el("td", {}, r.default ? "yes" : ""),
        el("td", {}, r.type === "ldap" ? [
          el("button", { class: "link", "aria-label": `Sync ${r.realm}`, onclick: () => sync(r.realm) }, "Sync"), " ",
          el("button", { class: "link danger", "aria-label": `Remove ${r.realm}`, onclick: () => remove(r.realm) }, "Remove"),
        ] : ""))))));
}
