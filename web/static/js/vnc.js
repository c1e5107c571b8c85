// A VM's graphical console: noVNC through vncproxy + vncwebsocket (the VNC password
// is the one-time ticket, as in Proxmox).
"use strict";
import { call, el, ApiError } from "./api.js";

export function vncConsole(body, node, vmid) {
  const stateLine = el("p", { class: "console-state muted", id: "console-state", role: "status" }, "Connecting…");
  const again = el("button", { hidden: true, onclick: () => connect() }, "Reconnect");
  const cad = el("button", { onclick: () => rfb && rfb.sendCtrlAltDel() }, "Ctrl-Alt-Del");
  const screen = el("div", { id: "vnc", tabindex: "0", "aria-label": `Screen of VM ${vmid}` });
  body.append(el("div", { class: "toolbar" }, stateLine, cad, again), screen);
  let rfb = null;
  let disposed = false;

  async function connect() {
    again.hidden = true;
    stateLine.textContent = "Connecting…";
    let proxy;
    try {
      proxy = await call("POST", `/nodes/${encodeURIComponent(node)}/qemu/${vmid}/vncproxy`, { websocket: 1 });
    } catch (e) {
      stateLine.textContent = `Console failed: ${e instanceof ApiError ? e.detail : e.message}`;
      again.hidden = false;
      return;
    }
    // noVNC is an ES module: loaded only when a VM console opens.
    const { default: RFB } = await import("/static/vendor/novnc/core/rfb.js");
    if (disposed) return;
    const url = `wss://${location.host}/api2/json/nodes/${encodeURIComponent(node)}/qemu/${vmid}/vncwebsocket` +
      `?port=${proxy.port}&vncticket=${encodeURIComponent(proxy.ticket)}`;
    screen.replaceChildren();
    rfb = new RFB(screen, url, { credentials: { password: proxy.ticket }, wsProtocols: ["binary"] });
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => { stateLine.textContent = `Connected to VM ${vmid} on ${node}`; screen.dataset.connected = "1"; });
    rfb.addEventListener("disconnect", (ev) => {
      stateLine.textContent = ev.detail.clean ? "Disconnected" : "Connection lost";
      screen.dataset.connected = "";
      again.hidden = false;
    });
    rfb.addEventListener("securityfailure", (ev) => { stateLine.textContent = `Refused: ${ev.detail.reason || ev.detail.status}`; });
  }
  connect();
  return { dispose() { disposed = true; if (rfb) rfb.disconnect(); } };
}
