// model-trainer dashboard: the jobs table and the selected job's curves, kept live by the
// server's events (/events: "snapshot" when connected, then "delta"). No dependencies.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
// every status the server sends (board.ViewStatus; a test keeps the two lists equal)
const STATUSES = ["queued", "running", "completed", "failed", "cancelled", "rejected"];
const ENDED_BADLY = ["failed", "cancelled", "rejected"];
const state = { jobs: new Map(), series: new Map(), selected: null };

// ---------------------------------------------------------------- model

function mergeSeries(jobId, payload) {
  let all = state.series.get(jobId);
  if (!all) {
    all = {};
    state.series.set(jobId, all);
  }
  for (const [name, part] of Object.entries(payload || {})) {
    const points = all[name] || [];
    if (part.reset) {
      all[name] = part.points.slice();
      continue;
    }
    // appended points; any already held (a resent delta) are skipped by step
    const last = points.length ? points[points.length - 1][0] : -Infinity;
    for (const point of part.points) {
      if (point[0] > last) points.push(point);
    }
    all[name] = points;
  }
}

function apply(message, isSnapshot) {
  if (isSnapshot) {
    state.jobs.clear();
    state.series.clear();
  }
  for (const row of message.jobs) state.jobs.set(row.job_id, row);
  for (const [jobId, payload] of Object.entries(message.series)) {
    mergeSeries(jobId, payload);
  }
  // the job named in the address (#job=ID) once it is known, else the current one, else the
  // newest running job, else the newest
  const wanted = hashJob();
  if (wanted && state.jobs.has(wanted)) state.selected = wanted;
  else if (!state.selected || !state.jobs.has(state.selected)) state.selected = pickDefault();
  render();
}

function hashJob() {
  return decodeURIComponent((location.hash.match(/job=([^&]+)/) || [])[1] || "");
}

function pickDefault() {
  const rows = sortedRows();
  const running = rows.find((row) => row.status === "running");
  return (running || rows[0] || {}).job_id || null;
}

function sortedRows() {
  const key = (row) => row.submitted_at || row.updated_at || "";
  return [...state.jobs.values()].sort((a, b) => (key(a) < key(b) ? 1 : key(a) > key(b) ? -1 : 0));
}

// ---------------------------------------------------------------- formatting

function fmt(value, digits = 4) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function fmtRate(value) {
  return value === null || value === undefined ? "-" : Math.round(value).toLocaleString("en-US");
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function fmtTick(value, span) {
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e5 || magnitude < 1e-3) return value.toExponential(1);
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(span || 1)) + 1));
  return value.toFixed(decimals);
}

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

// ---------------------------------------------------------------- table

function render() {
  renderCounts();
  renderTable();
  renderDetail();
}

function renderCounts() {
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const row of state.jobs.values()) counts[row.status] = (counts[row.status] || 0) + 1;
  const box = document.getElementById("counts");
  box.replaceChildren(
    ...STATUSES.map((s) => el("span", { "data-status": s }, `${s} ${counts[s]}`))
  );
}

function renderTable() {
  const body = document.querySelector("#jobs tbody");
  const rows = sortedRows();
  document.getElementById("empty").hidden = rows.length > 0;
  body.replaceChildren(
    ...rows.map((row) => {
      const tr = el("tr", { "data-job": row.job_id });
      if (row.job_id === state.selected) tr.classList.add("selected");
      const status = el("td", { class: "status" });
      status.append(el("span", { class: `badge ${row.status}` }, row.status));
      const labels = Object.entries(row.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
      const progress = el("td", { class: "progress" });
      if (row.total_steps > 0) {
        const bar = el("span", { class: "bar" });
        const fill = el("i");
        const done = row.status === "completed" ? 1 : Math.min(1, row.step / row.total_steps);
        fill.style.width = `${(done * 100).toFixed(1)}%`;
        bar.append(fill);
        progress.append(bar, document.createTextNode(`${row.step}/${row.total_steps}`));
      } else if (row.status === "queued" && row.queue_position !== null) {
        progress.textContent = `waiting #${row.queue_position}`;
      } else {
        progress.textContent = ENDED_BADLY.includes(row.status) ? row.error_code || "-" : "-";
      }
      tr.append(
        el("td", { class: "job" }, row.job_id),
        status,
        el("td", { class: "num user" }, String(row.user_id)),
        el("td", { class: "labels" }, labels || "-"),
        el("td", { class: "num attempt" }, String(row.attempt || "-")),
        progress,
        el("td", { class: "num loss" }, fmt(row.train_loss)),
        el("td", { class: "num val" }, fmt(row.val_loss)),
        el("td", { class: "num tps" }, fmtRate(row.tokens_per_sec)),
        el("td", { class: "num eta" }, row.status === "running" ? fmtDuration(row.eta_s) : "-"),
        el("td", { class: "updated" }, (row.updated_at || "").replace("T", " ").slice(0, 19))
      );
      tr.addEventListener("click", () => {
        state.selected = row.job_id;
        history.replaceState(null, "", `#job=${encodeURIComponent(row.job_id)}`);
        render();
      });
      return tr;
    })
  );
}

function renderDetail() {
  const section = document.getElementById("detail");
  const row = state.jobs.get(state.selected);
  section.hidden = !row;
  if (!row) return;
  document.getElementById("detail-job").textContent = row.job_id;
  const badge = document.getElementById("detail-status");
  badge.className = `badge ${row.status}`;
  badge.textContent = row.status;
  const info = [];
  if (row.model) info.push(`${row.model} on ${row.device}`);
  if (row.attempt) info.push(`attempt ${row.attempt}`);
  if (row.best_val_loss !== null) info.push(`best val loss ${fmt(row.best_val_loss)}`);
  if (row.artifact_path) info.push(`artifact ${row.artifact_path}`);
  if (row.error_code) info.push(`${row.error_code}: ${row.error_message || ""}`);
  document.getElementById("detail-info").textContent = info.join(" · ");
  const series = state.series.get(row.job_id) || {};
  drawChart(document.getElementById("chart-loss"), [
    { name: "train_loss", label: "train", points: series.train_loss || [] },
    { name: "val_loss", label: "val", points: series.val_loss || [], dots: true },
  ]);
  drawChart(document.getElementById("chart-lr"), [
    { name: "learning_rate", label: "lr", points: series.learning_rate || [] },
  ]);
  drawChart(document.getElementById("chart-tps"), [
    { name: "tokens_per_sec", label: "tok/s", points: series.tokens_per_sec || [] },
  ]);
  if (logs.job !== row.job_id) refreshLogs(true);
}

// ---------------------------------------------------------------- logs

// The selected job's log lines: fetched when it is selected, then every few seconds while it
// is queued or running (its lines are on the logs topic, not in the event stream).
const LOG_POLL_MS = 3000;
const logs = { job: null, fetched: 0, busy: false };

async function refreshLogs(force) {
  const row = state.jobs.get(state.selected);
  if (!row || logs.busy) return;
  const active = row.status === "queued" || row.status === "running";
  const changed = logs.job !== row.job_id;
  if (!force && !changed && !(active && Date.now() - logs.fetched > LOG_POLL_MS)) return;
  logs.busy = true;
  try {
    const response = await fetch(`/api/logs/${encodeURIComponent(row.job_id)}`);
    if (!response.ok) return;
    const body = await response.json();
    if (body.job_id !== state.selected) return;
    const box = document.getElementById("detail-logs");
    box.textContent = body.lines.length ? body.lines.join("\n") : "no log lines yet";
    box.classList.toggle("muted", body.lines.length === 0);
    logs.job = body.job_id;
    logs.fetched = Date.now();
  } catch (err) {
    // the next refresh tries again
  } finally {
    logs.busy = false;
  }
}

setInterval(() => refreshLogs(false), 1000);

// ---------------------------------------------------------------- charts

function niceTicks(lo, hi, count) {
  const span = hi - lo;
  const raw = span / Math.max(1, count);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => span / s <= count) || 10 * power;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  }
  return { ticks, step };
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function drawChart(root, lines) {
  const [width, height] = [640, 240];
  const margin = { left: 72, right: 16, top: 30, bottom: 30 };
  const all = lines.flatMap((line) => line.points);
  root.replaceChildren();
  if (!all.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "nodata" }, "no data yet"));
    return;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) {
    const pad = Math.abs(y0) * 0.1 || 1;
    [y0, y1] = [y0 - pad, y1 + pad];
  } else {
    const pad = (y1 - y0) * 0.05;
    [y0, y1] = [y0 - pad, y1 + pad];
  }
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const sx = (x) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => margin.top + (1 - (y - y0) / (y1 - y0)) * plotH;

  const axis = svg("g", { class: "axis" });
  const yt = niceTicks(y0, y1, 5);
  for (const t of yt.ticks) {
    axis.append(svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: sy(t), y2: sy(t) }));
    axis.append(svg("text", { x: margin.left - 8, y: sy(t) + 5, "text-anchor": "end" }, fmtTick(t, yt.step)));
  }
  const xt = niceTicks(x0, x1, 6);
  for (const t of xt.ticks) {
    axis.append(svg("text", { x: sx(t), y: height - 6, "text-anchor": "middle" }, String(Math.round(t))));
  }
  axis.append(svg("line", { class: "grid", x1: margin.left, x2: margin.left, y1: margin.top, y2: height - margin.bottom }));
  root.append(axis);

  const legend = svg("g", { class: "legend" });
  let lx = margin.left;
  for (const line of lines) {
    const path = line.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { class: `line ${line.name}`, points: path, "data-points": line.points.length }));
    if (line.dots) {
      for (const p of line.points) {
        root.append(svg("circle", { class: line.name, cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 3 }));
      }
    }
    legend.append(svg("line", { class: `line ${line.name}`, x1: lx, x2: lx + 20, y1: 12, y2: 12 }));
    legend.append(svg("text", { x: lx + 26, y: 17 }, line.label));
    lx += 44 + line.label.length * 9;
  }
  root.append(legend);
}

// ---------------------------------------------------------------- wiring

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("/events");
  source.addEventListener("open", () => {
    status.textContent = "live";
    status.className = "connection live";
  });
  // the server's own link to Kafka: while it is down the page shows what it had, stale
  source.addEventListener("kafka", (e) => {
    const live = JSON.parse(e.data).live;
    status.textContent = live ? "live" : "stale: Kafka unreachable";
    status.className = live ? "connection live" : "connection stale";
  });
  source.addEventListener("error", () => {
    status.textContent = "reconnecting…";
    status.className = "connection";
  });
  source.addEventListener("snapshot", (e) => apply(JSON.parse(e.data), true));
  source.addEventListener("delta", (e) => apply(JSON.parse(e.data), false));
}

connect();
