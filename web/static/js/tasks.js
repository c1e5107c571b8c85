// The task panel: running and recent tasks of the whole cluster, live, with their logs.
"use strict";
import { call, el, fmtTime } from "./api.js";

const REFRESH_MS = 1500;
const LABELS = {
  vzcreate: "Create CT", vzstart: "Start CT", vzstop: "Stop CT", vzshutdown: "Shutdown CT", vzreboot: "Reboot CT",
  vzdestroy: "Destroy CT", vzsuspend: "Suspend CT", vzresume: "Resume CT", vzmigrate: "Migrate CT",
  qmcreate: "Create VM", qmstart: "Start VM", qmstop: "Stop VM", qmshutdown: "Shutdown VM", qmreboot: "Reboot VM",
  qmdestroy: "Destroy VM", qmsuspend: "Suspend VM", qmresume: "Resume VM", qmigrate: "Migrate VM", qmconfig: "Configure VM",
  vzconfig: "Configure CT", vzsnapshot: "Snapshot CT", vzrollback: "Rollback CT", vzdelsnapshot: "Delete snapshot of CT",
  qmsnapshot: "Snapshot VM", qmrollback: "Rollback VM", qmdelsnapshot: "Delete snapshot of VM", vzclone: "Clone CT", qmclone: "Clone VM",
  vzdump: "Backup", imgcopy: "Upload to", download: "Download to", vztemplate: "Convert CT to template", qmtemplate: "Convert VM to template", resize: "Resize disk of",
};
Object.assign(LABELS, { "auth-realm-sync": "Sync realm", vzrestore: "Restore CT", qmrestore: "Restore VM", imgdel: "Delete volume on" });

// Console sessions (running while open) and node services.
Object.assign(LABELS, { vncproxy: "Console", termproxy: "Terminal", srvrestart: "Restart service", srvreload: "Reload service" });

export function describe(t) {
  const what = LABELS[t.type] || t.type;
  return t.id ? `${what} ${t.id}` : what;
}

function statusOf(t) {
  if (!t.status && !t.endtime) return "running";
  return t.status || "OK";
}

export const tasks = {
  timer: null,
  logTimer: null,
  shown: null,
  list: [],

  start() {
    document.getElementById("tasks-toggle").onclick = (ev) => {
      const wrap = document.getElementById("tasklist-wrap");
      wrap.hidden = !wrap.hidden;
      ev.currentTarget.setAttribute("aria-expanded", String(!wrap.hidden));
    };
    document.getElementById("tasklog-close").onclick = () => this.closeLog();
    this.tick();
  },

  stop() {
    clearTimeout(this.timer);
    clearTimeout(this.logTimer);
  },

  pushed: false, // the state feed delivers the list: no polling

  async tick() {
    clearTimeout(this.timer);
    if (!document.hidden && !this.pushed) await this.load().catch(() => {});
    this.timer = setTimeout(() => this.tick(), REFRESH_MS);
  },

  async load() {
    this.render(await call("GET", "/cluster/tasks"));
  },

  render(rows) {
    // Running first, then the most recent.
    rows.sort((a, b) => (statusOf(b) === "running") - (statusOf(a) === "running") || b.starttime - a.starttime);
    this.list = rows.slice(0, 50);
    const running = rows.filter((t) => statusOf(t) === "running").length;
    document.getElementById("tasks-running").textContent = running ? `${running} running` : "";
    const tbody = document.querySelector("#tasklist tbody");
    tbody.replaceChildren(...this.list.map((t) => {
      const st = statusOf(t);
      const cls = st === "running" ? "running" : st === "OK" ? "OK" : "failed";
      return el("tr", { tabindex: "0", "data-upid": t.upid, "aria-selected": String(this.shown === t.upid),
        onclick: () => this.show(t.upid), onkeydown: (ev) => { if (ev.key === "Enter") this.show(t.upid); } },
        el("td", {}, fmtTime(t.starttime)), el("td", {}, t.node), el("td", {}, describe(t)),
        el("td", {}, t.user), el("td", { class: cls }, st));
    }));
  },

  // Opens the task's log in the panel and follows it until the task ends.
  async show(upid) {
    this.shown = upid;
    const node = upid.split(":")[1];
    document.getElementById("tasklist-wrap").hidden = false;
    document.getElementById("tasklist-wrap").classList.add("with-log");
    document.getElementById("tasklog-wrap").hidden = false;
    const pre = document.getElementById("tasklog");
    const title = document.getElementById("tasklog-title");
    clearTimeout(this.logTimer);
    const poll = async () => {
      if (this.shown !== upid) return;
      const [lines, st] = await Promise.all([
        call("GET", `/nodes/${node}/tasks/${encodeURIComponent(upid)}/log`, { limit: 0 }),
        call("GET", `/nodes/${node}/tasks/${encodeURIComponent(upid)}/status`),
      ]);
      if (this.shown !== upid) return;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = lines.map((l) => l.t).join("\n");
      if (atEnd) pre.scrollTop = pre.scrollHeight;
      title.textContent = `${describe(st)} · ${st.status === "stopped" ? st.exitstatus : "running"}`;
      stopButton(upid, st.status !== "stopped");
      title.dataset.state = st.status === "stopped" ? st.exitstatus : "running";
      if (st.status !== "stopped") this.logTimer = setTimeout(() => poll().catch(retry), 700);
      else this.load().catch(() => {});
    };
    // A failed read (a node restarting its etcd answers 503 for a moment) is retried,
    // or the log would stop following the task.
    const retry = () => { if (this.shown === upid) this.logTimer = setTimeout(() => poll().catch(retry), 1500); };
    await poll().catch(retry);
  },

  closeLog() {
    this.shown = null;
    clearTimeout(this.logTimer);
    document.getElementById("tasklog-wrap").hidden = true;
    document.getElementById("tasklist-wrap").classList.remove("with-log");
  },
};

// Stop for the running task whose log is shown (DELETE .../tasks/UPID, as Proxmox's
// Stop: a console's task then closes the console).
function stopButton(upid, running) {
  let b = document.getElementById("tasklog-stop");
  if (!b) {
    b = el("button", { id: "tasklog-stop", class: "link danger", type: "button" }, "Stop");
    document.getElementById("tasklog-close").before(b);
  }
  b.hidden = !running;
  b.onclick = () => call("DELETE", `/nodes/${upid.split(":")[1]}/tasks/${encodeURIComponent(upid)}`).catch(() => {});
}

// Shows a task the user just started, and refreshes the list at once.
export function follow(upid) {
  if (typeof upid === "string" && upid.startsWith("UPID:")) {
    tasks.show(upid);
    tasks.load().catch(() => {});
  }
  return upid;
}
