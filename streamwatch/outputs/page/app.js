// The streamwatch live page: polls /api/state, draws each sensor's recent score against its
// threshold as an SVG line, lists recent alerts, and sends commands to /api/cmd/<id> (the same
// validation and worker path as MQTT commands). No library, no build step, nothing fetched
// from elsewhere. Every text from the daemon is set as textContent (ids come from topics).
"use strict";

const POLL_MS = 2000;
const SPARK_W = 220, SPARK_H = 36;
let commandsOn = true;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toPrecision(digits);
}

function clock(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "–";
}

function spark(history) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", SPARK_W);
  svg.setAttribute("height", SPARK_H);
  const pts = history.filter((p) => p[1] !== null);
  if (pts.length < 2) return svg;
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0] || t0 + 1;
  let top = 0;
  for (const p of pts) top = Math.max(top, p[1], p[2] || 0);
  top = top * 1.1 || 1;
  const x = (t) => ((t - t0) / Math.max(t1 - t0, 1e-9)) * (SPARK_W - 2) + 1;
  const y = (v) => SPARK_H - 1 - (Math.min(v, top) / top) * (SPARK_H - 2);
  const line = (cls, idx) => {
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("class", cls);
    path.setAttribute("points", pts.filter((p) => p[idx] !== null)
      .map((p) => `${x(p[0]).toFixed(1)},${y(p[idx]).toFixed(1)}`).join(" "));
    svg.append(path);
  };
  line("thr", 2);
  line("score", 1);
  return svg;
}

async function send(id, command) {
  const status = document.getElementById("status");
  try {
    const r = await fetch("/api/cmd/" + encodeURIComponent(id), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(command),
    });
    const res = await r.json();
    status.className = res.ok ? "status" : "status error";
    status.textContent = res.ok ? `${command.action} ${id}: done` : `${command.action} ${id}: ${res.error}`;
  } catch (e) {
    status.className = "status error";
    status.textContent = `${command.action} ${id}: ${e}`;
  }
  poll();
}

function actions(s) {
  const td = el("td", { class: "actions" });
  if (!commandsOn) return td;
  const b = (label, action, command, confirmText) => {
    const btn = el("button", { "data-action": action, type: "button" }, label);
    btn.addEventListener("click", () => {
      if (confirmText && !window.confirm(confirmText)) return;
      send(s.id, command);
    });
    td.append(btn);
  };
  if (s.muted) b("Unmute", "unmute", { action: "unmute" });
  else {
    b("Mute 1 h", "mute", { action: "mute", for_s: 3600, reason: "muted from the live page" });
    b("Maintenance 2 h", "maintenance", { action: "maintenance", for_s: 7200, reason: "from the live page" });
  }
  if (s.kind === "sensor") {
    if (s.alert_id && s.acked_alert_id !== s.alert_id) b("Ack", "ack", { action: "ack", alert_id: s.alert_id });
    b("Relearn", "relearn", { action: "relearn", reason: "accepted as normal from the live page" },
      `Accept the current behaviour of ${s.id} as normal? It forgets what it learned and warms up again.`);
  }
  return td;
}

function sensorRow(s) {
  const state = el("td", { class: "state" }, el("span", { class: "badge " + s.state }, s.state));
  if (s.muted && s.muted_until) state.append(el("div", { class: "sub" }, "until " + clock(s.muted_until)));
  if (s.fault && s.state !== "fault") state.append(el("div", { class: "sub" }, "fault: " + s.fault));
  else if (s.fault) state.append(el("div", { class: "sub" }, s.fault));
  if (s.alert_id && s.state !== "alert") state.append(el("div", { class: "sub" }, "alert raised"));
  if (s.acked_alert_id && s.acked_alert_id === s.alert_id) state.append(el("div", { class: "sub" }, "acknowledged"));
  return el("tr", { "data-id": s.id, "data-state": s.state },
    el("td", {}, s.id, el("div", { class: "sub" }, s.kind === "sensor" ? `${s.readings} readings` : "not seen yet")),
    state,
    el("td", { class: "num" }, `${fmt(s.score)} / ${fmt(s.threshold)}`),
    el("td", {}, spark(s.history || [])),
    actions(s));
}

function why(a) {
  const out = [];
  if (a.kind === "sensor_fault") out.push("sensor fault: " + a.fault);
  if (a.parts) {
    const parts = Object.entries(a.parts).sort((p, q) => q[1] - p[1]);
    out.push(parts.map(([k, v]) => `${k} ${fmt(v, 2)}`).join(", "));
  }
  if (a.sensors) {
    const ss = Array.isArray(a.sensors) ? a.sensors : Object.entries(a.sensors).map(([k, v]) => `${k} ${fmt(v, 2)}`);
    out.push("sensors: " + ss.join(", "));
  }
  if (a.reason) out.push("reason: " + a.reason);
  if (a.muted) out.push("muted");
  if (a.acked) out.push("acknowledged");
  return out.join(" · ") || "–";
}

function alertRow(a) {
  const ack = el("td", {});
  if (commandsOn && a.state === "raised" && !a.acked) {
    const btn = el("button", { "data-action": "ack", type: "button" }, "Ack");
    btn.addEventListener("click", () => send(a.sensor, { action: "ack", alert_id: a.alert_id }));
    ack.append(btn);
  }
  return el("tr", { "data-alert": a.alert_id },
    el("td", {}, clock(a.ts)), el("td", {}, a.sensor),
    el("td", {}, el("span", { class: "badge " + a.state }, a.state)),
    el("td", { class: "num" }, `${fmt(a.score)} / ${fmt(a.threshold)}`),
    el("td", {}, why(a)), ack);
}

async function poll() {
  const summary = document.getElementById("summary");
  try {
    const r = await fetch("/api/state", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const snap = await r.json();
    commandsOn = snap.commands;
    const counts = {};
    for (const s of snap.sensors) counts[s.state] = (counts[s.state] || 0) + 1;
    summary.textContent = `${snap.sensors.length} ids · ` +
      Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(" · ") +
      ` · detector ${snap.detector} · ${clock(snap.now)}`;
    document.querySelector("#sensors tbody").replaceChildren(...snap.sensors.map(sensorRow));
    document.querySelector("#alerts tbody").replaceChildren(...snap.alerts.map(alertRow));
  } catch (e) {
    summary.textContent = "cannot reach the daemon: " + e;
  }
}

poll();
setInterval(poll, POLL_MS);
