// The one way the console talks to corrald: the same /api2/json API as every client.
"use strict";

const BASE = "/api2/json";
export const session = {
  csrf: sessionStorage.getItem("csrf") || "",
  user: sessionStorage.getItem("user") || "",
  onLogout: () => {},
};

export class ApiError extends Error {
  constructor(status, message, errors) {
    super(message);
    this.status = status;
    this.errors = errors || {};
  }
  // What the API said, with each bad parameter's reason (as Proxmox shows it).
  get detail() {
    const per = Object.entries(this.errors).map(([k, v]) => `${k}: ${v}`);
    return per.length ? `${this.message} (${per.join("; ")})` : this.message;
  }
}

export async function call(method, path, params) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  let url = BASE + path;
  const clean = Object.fromEntries(Object.entries(params || {}).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  if (method === "GET" || method === "DELETE") {
    if (Object.keys(clean).length) url += "?" + new URLSearchParams(clean);
  } else if (params) {
    opts.body = new URLSearchParams(clean);
  }
  if (method !== "GET" && session.csrf) opts.headers.CSRFPreventionToken = session.csrf;
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({}));
  if (r.status === 401 && path !== "/access/ticket") {
    session.onLogout();
    throw new ApiError(401, "login required");
  }
  if (!r.ok) throw new ApiError(r.status, body.message || r.statusText, body.errors);
  return body.data;
}

// Returns the login, or {NeedTFA, ticket} when a second factor is due: then call
// loginTfa() with that challenge and the code.
export async function login(username, password) {
  const data = await call("POST", "/access/ticket", { username, password });
  if (data.NeedTFA) return data;
  return keep(data);
}

export async function loginTfa(username, challenge, code) {
  return keep(await call("POST", "/access/ticket", { username, "tfa-challenge": challenge, password: `totp:${code}` }));
}

function keep(data) {
  // Secure, same-site cookie under the name Proxmox uses: the API, the WebSocket
  // consoles and forwarded calls all authenticate by it.
  document.cookie = `PVEAuthCookie=${encodeURIComponent(data.ticket)}; path=/; secure; samesite=strict`;
  session.csrf = data.CSRFPreventionToken;
  session.user = data.username;
  sessionStorage.setItem("csrf", session.csrf);
  sessionStorage.setItem("user", session.user);
  return data;
}

export function logout() {
  document.cookie = "PVEAuthCookie=; path=/; max-age=0";
  sessionStorage.clear();
  session.csrf = "";
  session.user = "";
}

export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) e.append(c);
  return e;
}

let toastTimer = null;
export function toast(message, kind) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.className = kind || "";
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, kind === "info" ? 3000 : 8000);
}

// Runs an action, showing the API's own message when it fails.
export async function attempt(fn) {
  try {
    return await fn();
  } catch (e) {
    toast(e instanceof ApiError ? e.detail : String(e.message || e));
    return undefined;
  }
}

export function fmtBytes(n) {
  if (n === undefined || n === null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  n = Number(n);
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}

export function fmtPct(x) {
  return x === undefined || x === null ? "" : (100 * x).toFixed(1) + " %";
}

export function fmtUptime(s) {
  if (!s) return "-";
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return (d ? `${d} d ` : "") + `${String(h).padStart(2, "0")}:${String(m).padStart(2, "0")}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}

export function fmtTime(t) {
  return t ? new Date(t * 1000).toLocaleString() : "";
}
