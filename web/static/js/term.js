// A CT's terminal: xterm.js through termproxy + vncwebsocket (Proxmox's protocol:
// first `USER:TICKET\n` answered `OK`, then `0:LENGTH:DATA` input, `1:COLS:ROWS:` resize,
// `2` keep-alive; output arrives as binary messages).
"use strict";
import { call, el, session, ApiError } from "./api.js";

const encoder = new TextEncoder();

// `vmid` null: the node's own shell (/nodes/{node}/termproxy); `serial` ("serial0"): a VM's
// serial port.
export function terminalConsole(body, node, vmid, serial) {
  const base = vmid === null ? `/nodes/${encodeURIComponent(node)}`
    : `/nodes/${encodeURIComponent(node)}/${serial ? "qemu" : "lxc"}/${vmid}`;
  const what = vmid === null ? `node ${node}` : serial ? `${serial} of VM ${vmid} on ${node}` : `CT ${vmid} on ${node}`;
  const stateLine = el("p", { class: "console-state muted", id: "console-state", role: "status" }, "Connecting…");
  const box = el("div", { id: "terminal" });
  const again = el("button", { hidden: true, onclick: () => connect() }, "Reconnect");
  body.append(el("div", { class: "toolbar" }, stateLine, again), box);
  const term = new window.Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace", theme: { background: "#000000" } });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  let ws = null;
  let ping = null;
  let ready = false;
  const send = (text) => {
    if (!ws || ws.readyState !== WebSocket.OPEN || !ready) return;
    const bytes = encoder.encode(text);
    const head = encoder.encode(`0:${bytes.length}:`);
    const msg = new Uint8Array(head.length + bytes.length);
    msg.set(head);
    msg.set(bytes, head.length);
    ws.send(msg);
  };
  const resize = () => {
    fit.fit();
    if (ws && ws.readyState === WebSocket.OPEN && ready) ws.send(`1:${term.cols}:${term.rows}:`);
  };
  term.onData(send);
  const onResize = () => resize();
  window.addEventListener("resize", onResize);
  const decoder = new TextDecoder();

  async function connect() {
    again.hidden = true;
    ready = false;
    stateLine.textContent = "Connecting…";
    let proxy;
    try {
      proxy = await call("POST", `${base}/termproxy`, serial ? { serial } : undefined);
    } catch (e) {
      stateLine.textContent = `Console failed: ${e instanceof ApiError ? e.detail : e.message}`;
      stateLine.className = "console-state error";
      again.hidden = false;
      return;
    }
    const url = `wss://${location.host}/api2/json${base}/vncwebsocket` +
      `?port=${proxy.port}&vncticket=${encodeURIComponent(proxy.ticket)}`;
    ws = new WebSocket(url, ["binary"]);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => ws.send(`${proxy.user || session.user}:${proxy.ticket}\n`);
    ws.onmessage = (ev) => {
      let text = typeof ev.data === "string" ? ev.data : decoder.decode(new Uint8Array(ev.data), { stream: true });
      if (!ready) {
        if (!text.startsWith("OK")) { stateLine.textContent = "Console refused the ticket"; ws.close(); return; }
        ready = true;
        text = text.slice(2);
        stateLine.textContent = `Connected to ${what}`;
        stateLine.className = "console-state muted";
        resize();
        term.focus();
        ping = setInterval(() => { if (ws.readyState === WebSocket.OPEN) ws.send("2"); }, 30000);
      }
      if (text) term.write(text);
    };
    ws.onclose = () => {
      clearInterval(ping);
      ready = false;
      stateLine.textContent = "Disconnected";
      again.hidden = false;
    };
  }
  connect();
  return {
    dispose() {
      window.removeEventListener("resize", onResize);
      clearInterval(ping);
      // No handler may touch the terminal once it is gone (a late message would throw).
      if (ws) { ws.onclose = null; ws.onmessage = null; ws.onopen = null; ws.close(); }
      term.dispose();
    },
  };
}
