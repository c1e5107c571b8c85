// Permissions: users, groups, pools, ACL entries and API tokens, through /access and /pools.
"use strict";
import { call, el, attempt, toast, fmtTime, session } from "./api.js";
import { realmsTab } from "./access_realms.js";

let lastSecret = ""; // a new token's secret stays shown until the page is left

const TABS = { users: "Users", groups: "Groups", pools: "Pools", acl: "Permissions", tokens: "API tokens", realms: "Realms", tfa: "My second factor" };

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: String(headers.length), class: "muted" }, "None yet."))));
}

// A one-line form: fields [{name, label, type?, placeholder?}], then `submit(values)`.
function inlineForm(id, fields, label, submit) {
  const form = el("form", { class: "toolbar", id },
    fields.map((f) => el("input", { name: f.name, type: f.type || "text", placeholder: f.placeholder || f.label, "aria-label": f.label })),
    el("button", { type: "submit", class: "primary" }, label));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    const ok = await attempt(async () => { await submit(values); return true; });
    if (ok) form.reset();
  });
  return form;
}

function removeButton(what, run) {
  return el("button", { class: "link danger", "aria-label": `Remove ${what}`, onclick: () => {
    if (confirm(`Remove ${what}?`)) attempt(run);
  } }, "Remove");
}

export function accessPage(main, tab) {
  tab = TABS[tab] ? tab : "users";
  const body = el("div");
  main.append(el("h1", {}, "Permissions"),
    el("nav", { class: "tabs", "aria-label": "Permission pages" }, Object.entries(TABS).map(([k, v]) =>
      el("a", { href: `#/access/${k}`, "aria-current": k === tab ? "page" : null }, v))), body);
  const show = () => attempt(() => RENDER[tab](body, show));
  show();
  return { dispose: () => { lastSecret = ""; } };
}

const RENDER = {
  realms: realmsTab,
  // The signed-in user's own TOTP: a fresh secret to put in an authenticator app, confirmed
  // by its current code and the account password (as Proxmox asks).
  async tfa(body, again) {
    const user = session.user;
    const [entries, fresh] = await Promise.all([
      call("GET", `/access/tfa/${encodeURIComponent(user)}`),
      call("GET", `/access/tfa/${encodeURIComponent(user)}/new-totp`),
    ]);
    const form = inlineForm("add-totp", [{ name: "value", label: "Code from the app" }, { name: "password", label: "Your password", type: "password" },
      { name: "description", label: "Description (phone, …)" }], "Add TOTP", async (v) => {
      await call("POST", `/access/tfa/${encodeURIComponent(user)}`, { type: "totp", totp: fresh.uri, ...v });
      toast("Second factor added: logins now ask for a code", "info");
      again();
    });
    body.replaceChildren(
      el("p", {}, "Add this secret to an authenticator app (or open the link on a phone), then confirm with the code it shows."),
      el("p", {}, el("code", { id: "totp-secret" }, fresh.secret), " · ", el("a", { href: fresh.uri, id: "totp-uri" }, "otpauth link")),
      form,
      table(["ID", "Type", "Description", "Added", ""], entries.map((e) => el("tr", { "data-tfa": e.id },
        el("td", {}, e.id), el("td", {}, e.type), el("td", {}, e.description || ""), el("td", {}, fmtTime(e.created)),
        el("td", {}, removeButton(`second factor ${e.id}`, async () => { await call("DELETE", `/access/tfa/${encodeURIComponent(user)}/${encodeURIComponent(e.id)}`); again(); }))))));
  },

  async users(body, again) {
    const users = await call("GET", "/access/users");
    body.replaceChildren(
      inlineForm("add-user", [{ name: "userid", label: "User (name@pve)" }, { name: "password", label: "Password", type: "password" },
        { name: "groups", label: "Groups (comma-separated)" }], "Add user",
      async (v) => { await call("POST", "/access/users", v); toast(`${v.userid} added`, "info"); again(); }),
      table(["User", "Name", "Email", "Groups", "Enabled", "Expires", ""], users.map((u) => el("tr", { "data-user": u.userid },
        el("td", {}, u.userid), el("td", {}, [u.firstname, u.lastname].filter(Boolean).join(" ")), el("td", {}, u.email || ""),
        el("td", {}, (u.groups || []).join(", ")), el("td", {}, u.enable === 0 ? "no" : "yes"), el("td", {}, u.expire ? fmtTime(u.expire) : "never"),
        el("td", {}, removeButton(u.userid, async () => { await call("DELETE", `/access/users/${encodeURIComponent(u.userid)}`); again(); }))))));
  },

  async groups(body, again) {
    const groups = await call("GET", "/access/groups");
    body.replaceChildren(
      inlineForm("add-group", [{ name: "groupid", label: "Group" }, { name: "comment", label: "Comment" }], "Add group",
        async (v) => { await call("POST", "/access/groups", v); again(); }),
      table(["Group", "Members", "Comment", ""], groups.map((g) => el("tr", { "data-group": g.groupid },
        el("td", {}, g.groupid), el("td", {}, g.users || ""), el("td", {}, g.comment || ""),
        el("td", {}, removeButton(`group ${g.groupid}`, async () => { await call("DELETE", `/access/groups/${encodeURIComponent(g.groupid)}`); again(); }))))));
  },

  async pools(body, again) {
    const pools = await call("GET", "/pools");
    const rows = [];
    for (const p of pools) {
      const [full] = await call("GET", "/pools", { poolid: p.poolid });
      rows.push(el("tr", { "data-pool": p.poolid }, el("td", {}, p.poolid), el("td", {}, (full.members || []).map((m) => m.id).join(", ")),
        el("td", {}, p.comment || ""),
        el("td", {}, removeButton(`pool ${p.poolid}`, async () => { await call("DELETE", "/pools", { poolid: p.poolid }); again(); }))));
    }
    body.replaceChildren(
      inlineForm("add-pool", [{ name: "poolid", label: "Pool" }, { name: "comment", label: "Comment" }], "Add pool",
        async (v) => { await call("POST", "/pools", v); again(); }),
      inlineForm("pool-members", [{ name: "poolid", label: "Pool" }, { name: "vms", label: "Guest IDs (comma-separated)" },
        { name: "storage", label: "Storages (comma-separated)" }], "Add members",
      async (v) => { await call("PUT", "/pools", v); again(); }),
      table(["Pool", "Members", "Comment", ""], rows));
  },

  async acl(body, again) {
    const [entries, roles] = await Promise.all([call("GET", "/access/acl"), call("GET", "/access/roles")]);
    const form = inlineForm("add-acl", [{ name: "path", label: "Path (/vms/100, /pool/web, /)" }, { name: "ugid", label: "User, group or token" }],
      "Grant", async (v) => {
        const role = form.querySelector("select[name=role]").value;
        const kind = form.querySelector("select[name=kind]").value;
        await call("PUT", "/access/acl", { path: v.path, roles: role, [kind]: v.ugid });
        again();
      });
    form.insertBefore(el("select", { name: "kind", "aria-label": "Kind" }, el("option", { value: "users" }, "user"),
      el("option", { value: "groups" }, "group"), el("option", { value: "tokens" }, "token")), form.lastChild);
    form.insertBefore(el("select", { name: "role", "aria-label": "Role" }, roles.map((r) => el("option", { value: r.roleid }, r.roleid))), form.lastChild);
    body.replaceChildren(form,
      table(["Path", "User / group / token", "Type", "Role", "Propagate", ""], entries.map((e) => el("tr", {},
        el("td", {}, e.path), el("td", {}, e.ugid), el("td", {}, e.type), el("td", {}, e.roleid), el("td", {}, e.propagate ? "yes" : "no"),
        el("td", {}, removeButton(`${e.roleid} of ${e.ugid} on ${e.path}`, async () => {
          await call("PUT", "/access/acl", { path: e.path, roles: e.roleid, [`${e.type}s`]: e.ugid, delete: 1 });
          again();
        }))))));
  },

  async tokens(body, again) {
    const users = await call("GET", "/access/users");
    const rows = [];
    for (const u of users) {
      for (const t of await call("GET", `/access/users/${encodeURIComponent(u.userid)}/token`)) {
        rows.push(el("tr", {}, el("td", {}, `${u.userid}!${t.tokenid}`), el("td", {}, t.privsep ? "separated" : "full"),
          el("td", {}, t.expire ? fmtTime(t.expire) : "never"), el("td", {}, t.comment || ""),
          el("td", {}, removeButton(`token ${u.userid}!${t.tokenid}`, async () => {
            await call("DELETE", `/access/users/${encodeURIComponent(u.userid)}/token/${encodeURIComponent(t.tokenid)}`);
            again();
          }))));
      }
    }
    const secret = el("p", { id: "token-secret", class: "muted", role: "status" }, lastSecret);
    body.replaceChildren(
      inlineForm("add-token", [{ name: "userid", label: "User" }, { name: "tokenid", label: "Token ID" }, { name: "comment", label: "Comment" }],
        "Add token", async (v) => {
          const made = await call("POST", `/access/users/${encodeURIComponent(v.userid)}/token/${encodeURIComponent(v.tokenid)}`, { comment: v.comment });
          lastSecret = `Secret of ${made["full-tokenid"]} (shown once): ${made.value}`;
          again();
        }),
      secret,
      table(["Token", "Privileges", "Expires", "Comment", ""], rows));
  },
};
