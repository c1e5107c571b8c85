// Small dependency-free SVG line charts of a Proxmox `rrddata` series.
"use strict";
import { call, el, fmtBytes, ApiError } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
};

function fmt(value, unit) {
  if (value === undefined || value === null || Number.isNaN(value)) return "-";
  if (unit === "ratio") return (100 * value).toFixed(1) + " %";
  if (unit === "bytes") return fmtBytes(value);
  if (unit === "rate") return fmtBytes(value) + "/s";
  return Number(value).toFixed(2);
}

// One chart: points [[t, v]...] scaled into a 300×100 viewBox.
export function lineChart(title, points, unit) {
  const box = el("figure", { class: "chart", "data-points": String(points.length) });
  const last = points.length ? points[points.length - 1][1] : undefined;
  box.append(el("figcaption", {}, el("strong", {}, title), " ", el("span", { class: "muted" }, fmt(last, unit))));
  const s = svg("svg", { viewBox: "0 0 300 100", preserveAspectRatio: "none", role: "img", "aria-label": `${title}: ${points.length} points, last ${fmt(last, unit)}` });
  if (points.length > 1) {
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    const max = Math.max(...points.map((p) => p[1]), unit === "ratio" ? 0.01 : 1e-9);
    const xy = points.map(([t, v]) => `${(300 * (t - t0) / Math.max(1, t1 - t0)).toFixed(1)},${(98 - 96 * v / max).toFixed(1)}`);
    s.append(svg("polygon", { class: "area", points: `0,100 ${xy.join(" ")} 300,100` }));
    s.append(svg("polyline", { points: xy.join(" ") }));
  } else {
    const t = svg("text", { x: "150", y: "55", "text-anchor": "middle", fill: "currentColor", "font-size": "11" });
    t.textContent = "no points yet";
    s.append(t);
  }
  box.append(s);
  return box;
}

// Charts of `series` ([[field, title, unit]...]) from `path`, refreshed every 30 s.
export function rrdCharts(container, path, series, timeframe = "hour") {
  let timer = null;
  const load = async () => {
    try {
      const rows = await call("GET", path, { timeframe, cf: "AVERAGE" });
      container.replaceChildren(...series.map(([field, title, unit]) => lineChart(title,
        rows.filter((r) => r[field] !== undefined && r[field] !== null).map((r) => [r.time, Number(r[field])]), unit)));
    } catch (e) {
      const msg = e instanceof ApiError && e.status === 501 ? "This node keeps no history yet (rrddata is not available)." : (e.detail || e.message);
      container.replaceChildren(el("p", { class: "muted" }, msg));
    }
    timer = setTimeout(load, 30000);
  };
  load();
  return { dispose: () => clearTimeout(timer) };
}
