// Atalaia monitor dashboard: fetches the JSON routes under /api/dashboard and draws SVG charts.
// No library and no CDN: the page must work on a machine without internet.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh_ms")) || 5000;
const HEIGHT = 220;
const MARGIN = { top: 18, right: 12, bottom: 34, left: 56 };
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
const DASH = { p50: "", mean: "", rate: "", per_hour: "", score: "", p95: "6 3", p99: "2 3", threshold: "8 4" };
const THRESHOLD_COLOR = "#d62728";
const MAX_CIRCLES = 240; // per series: above this the line alone is drawn

const state = { charts: [], versions: [], results: {}, deploys: [], alerts: { open: [], transitions: [] } };

// -- small helpers -------------------------------------------------------------------------------
function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const a = Math.abs(value);
  if (a === 0) return "0";
  if (a >= 1e5 || a < 1e-3) return value.toExponential(2);
  if (a >= 100) return value.toFixed(0);
  if (a >= 10) return value.toFixed(1);
  if (a >= 1) return value.toFixed(2);
  return value.toPrecision(3);
}

// Tick labels with as many decimals as the tick step needs (0.05 → "0.05", 2000 → "2000").
function tickLabel(value, step) {
  if (step >= 1e5 || (step < 1e-3 && value !== 0)) return value.toExponential(1);
  return value.toFixed(Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
}

function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  if (spanMs > 36 * 3600e3) return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm;
  return hm;
}

function colorOf(version) {
  const i = state.versions.indexOf(version);
  return PALETTE[(i < 0 ? state.versions.length : i) % PALETTE.length];
}

// "Nice" axis ticks: 1, 2 or 5 times a power of ten.
function niceTicks(lo, hi, count) {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return { ticks, step, lo: Math.min(lo, ticks[0] ?? lo), hi: Math.max(hi, ticks[ticks.length - 1] ?? hi) };
}

function timeTicks(x0, x1, count) {
  const steps = [60e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 21600e3, 43200e3, 86400e3];
  const step = steps.find((s) => (x1 - x0) / s <= count) || 86400e3;
  const offset = new Date(x0).getTimezoneOffset() * 60e3; // align to local round times
  const ticks = [];
  for (let v = Math.ceil((x0 - offset) / step) * step + offset; v <= x1; v += step) ticks.push(v);
  return ticks;
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// -- data ----------------------------------------------------------------------------------------
function query(extra = {}) {
  const params = new URLSearchParams({ since: document.getElementById("range").value, ...extra });
  const version = document.getElementById("version").value;
  if (version && extra.name !== undefined) params.set("model_version", version);
  return params.toString();
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [versions, deploys, alerts, scoring, ...series] = await Promise.all([
      getJSON(`/api/dashboard/versions?${query()}`),
      getJSON(`/api/dashboard/deploys?${query()}`),
      getJSON(`/api/dashboard/alerts?${query()}`),
      getJSON(`/api/dashboard/scoring?${query()}`),
      ...state.charts.map((c) => getJSON(`/api/dashboard/series?${query({ name: c.key })}`)),
    ]);
    state.versions = versions.model_versions;
    state.deploys = deploys.deploys;
    state.alerts = alerts;
    state.scoring = scoring;
    state.charts.forEach((c, i) => (state.results[c.key] = series[i]));
    state.canaries = (await getJSON(`/api/dashboard/canaries?${query()}`)).canaries;
    render();
    status.classList.remove("error");
    status.textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
  } catch (err) {
    status.classList.add("error");
    status.textContent = `refresh failed: ${err.message}`;
  }
}

// -- rendering -----------------------------------------------------------------------------------
function render() {
  renderVersionFilter();
  renderAlerts();
  for (const chart of state.charts) renderChart(chart, state.results[chart.key]);
  renderLists();
  renderScoring();
  renderCanaries();
  document.body.dataset.loaded = "true";
}

// Lag (event time to stored row), the budget, and how much each expensive group was sampled.
function renderScoring() {
  const s = state.scoring;
  const lag = s.lag_s.events
    ? `event → row delay p50 ${fmt(s.lag_s.p50)} s, p95 ${fmt(s.lag_s.p95)} s (newest ${s.lag_s.events} events)`
    : "no events in range";
  const budget = s.budget_cores > 0 ? `${fmt(s.budget_cores)} core` : "off";
  document.getElementById("scoring-summary").textContent = `${lag}; scoring budget ${budget}.`;
  const rows = s.groups.map((g) => {
    const tr = el("tr", { "data-group": g.group });
    for (const v of [g.group, String(g.rows), fmt(g.mean_fraction), fmt(g.min_fraction), String(g.events_estimated)]) {
      tr.appendChild(el("td", {}, v));
    }
    return tr;
  });
  document.querySelector("#scoring-groups tbody").replaceChildren(...rows);
}

// A canary: its split (share, mode, requests per version) and its verdict with each metric's interval.
function renderCanaries() {
  const list = document.getElementById("canaries");
  const items = (state.canaries || []).map((c) => {
    const li = el("li", { class: `canary-item decision-${c.decision}`, "data-candidate": c.candidate });
    li.append(el("time", {}, new Date(c.started_at).toLocaleString([], { hour12: false })));
    li.append(el("span", { class: "badge" }, c.state === "running" ? "running" : c.decision));
    const requests = `${c.requests[c.candidate] || 0} vs ${c.requests[c.parent] || 0} requests`;
    const shadow = c.requests.shadow ? `, ${c.requests.shadow} shadow` : "";
    li.append(` ${c.candidate} (${Math.round(100 * c.share)}% ${c.mode}) vs ${c.parent}: ${requests}${shadow}`);
    for (const [name, test] of Object.entries(c.tests || {})) {
      const bounds = `[${fmt(test.lower)}, ${fmt(test.upper)}]`;
      li.append(el("div", { class: "canary-test" }, `${name}: ${fmt(test.difference)} ${bounds} margin ${fmt(test.margin)}, ${test.outcome}`));
    }
    // Progress towards the horizon: each arm's samples, and where a split without a verdict ends.
    const samples = Object.entries(c.samples || {}).map(([name, n]) => `${name} ${n.candidate} / ${n.parent}`);
    if (samples.length) li.append(el("div", { class: "canary-samples" }, `samples candidate / parent: ${samples.join(", ")}`));
    const h = c.horizon || {};
    if (c.state === "running" && h.max_samples && h.ends_by) {
      const ends = new Date(h.ends_by).toLocaleString([], { hour12: false });
      li.append(el("div", { class: "canary-horizon" }, `ends without a verdict at ${h.max_samples} samples per arm or at ${ends}`));
    }
    if (c.reasons && c.reasons.length) li.append(el("div", { class: "canary-reason" }, c.reasons.join("; ")));
    return li;
  });
  list.replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "none")]));
}

function renderVersionFilter() {
  const select = document.getElementById("version");
  const current = select.value;
  const wanted = ["", ...state.versions];
  const have = Array.from(select.options).map((o) => o.value);
  if (wanted.join("\n") === have.join("\n")) return;
  select.replaceChildren(...wanted.map((v) => el("option", { value: v }, v || "all")));
  select.value = wanted.includes(current) ? current : "";
}

function renderAlerts() {
  const open = state.alerts.open;
  const body = document.querySelector("#open-alerts tbody");
  const rows = open.map((a) => {
    const tr = el("tr", { class: `alert-row state-${a.state}`, "data-rule": a.rule, "data-alert-id": a.alert_id });
    const cell = (child) => {
      const td = el("td");
      if (typeof child === "string") td.textContent = child;
      else td.appendChild(child);
      tr.appendChild(td);
    };
    cell(el("span", { class: `badge state-${a.state}` }, a.state));
    cell(el("span", { class: `badge severity-${a.severity}` }, a.severity));
    cell(a.rule);
    cell(a.labels.model_version || Object.entries(a.labels).map(([k, v]) => `${k}=${v}`).join(", "));
    cell(fmt(a.value));
    cell(fmt(a.threshold));
    cell(new Date(a.started_at).toLocaleString([], { hour12: false }));
    cell(a.annotations.summary || a.annotations.description || "");
    cell(a.acked_by ? `by ${a.acked_by}` : "");
    return tr;
  });
  body.replaceChildren(...rows);
  document.getElementById("open-alerts").hidden = open.length === 0;
  document.getElementById("no-alerts").hidden = open.length > 0;
  const count = document.getElementById("open-count");
  const firing = open.filter((a) => a.state === "firing").length;
  count.textContent = String(open.length);
  count.classList.toggle("hot", firing > 0);
  document.title = firing ? `(${firing} firing) Atalaia monitor` : "Atalaia monitor";
}

function renderLists() {
  const fmtTime = (ms) => new Date(ms).toLocaleString([], { hour12: false });
  const transitions = document.getElementById("transitions");
  transitions.replaceChildren(
    ...state.alerts.transitions
      .slice(-50)
      .reverse()
      .map((a) => {
        const li = el("li", { class: `transition state-${a.state}` });
        li.append(el("time", {}, fmtTime(a.ts)), el("span", { class: `badge state-${a.state}` }, a.state));
        li.append(` ${a.rule} ${a.labels.model_version || ""} value ${fmt(a.value)} (threshold ${fmt(a.threshold)})`);
        return li;
      }),
  );
  if (!state.alerts.transitions.length) transitions.replaceChildren(el("li", { class: "empty" }, "none"));
  const deploys = document.getElementById("deploys");
  deploys.replaceChildren(
    ...state.deploys
      .slice()
      .reverse()
      .map((d) => {
        const li = el("li", { class: "deploy-item" });
        li.append(el("time", {}, fmtTime(d.ts)), `${d.kind} ${d.model_version}`);
        if (d.previous_version) li.append(` (from ${d.previous_version})`);
        if (d.reason) li.append(`: ${d.reason}`);
        return li;
      }),
  );
  if (!state.deploys.length) deploys.replaceChildren(el("li", { class: "empty" }, "none"));
}

function chartCard(chart) {
  let card = document.getElementById(`chart-${chart.key}`);
  if (card) return card;
  card = el("section", { class: "chart", id: `chart-${chart.key}`, "data-chart": chart.key });
  const title = el("h3");
  title.append(el("span", {}, chart.title), el("span", { class: "unit" }, chart.unit));
  card.append(title, el("div", { class: "legend" }), svgEl("svg", { role: "img", "aria-label": chart.title }));
  document.getElementById("charts").appendChild(card);
  const svg = card.querySelector("svg");
  svg.addEventListener("mousemove", (ev) => showTooltip(chart.key, svg, ev));
  svg.addEventListener("mouseleave", () => hideTooltip(svg));
  return card;
}

function renderChart(chart, data) {
  const card = chartCard(chart);
  const svg = card.querySelector("svg");
  const width = Math.max(svg.clientWidth || card.clientWidth - 20, 300);
  svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
  svg.replaceChildren();
  const x0 = Date.parse(data.since);
  const x1 = Date.parse(data.until);
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const series = data.series.filter((s) => s.points.length);
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of series) for (const [, v] of s.points) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
  if (!series.length) (lo = 0), (hi = 1);
  lo = Math.min(lo, 0);
  hi = hi + (hi - lo) * 0.08 || 1;
  const y = niceTicks(lo, hi, 4);
  const sx = (ms) => MARGIN.left + ((ms - x0) / (x1 - x0)) * plotW;
  const sy = (v) => MARGIN.top + plotH - ((v - y.lo) / (y.hi - y.lo)) * plotH;
  svg._scale = { sx, sy, x0, x1, plotW, series, chart };

  const axis = svgEl("g", { class: "axis" });
  for (const v of y.ticks) {
    axis.appendChild(svgEl("line", { class: "grid-line", x1: MARGIN.left, x2: width - MARGIN.right, y1: sy(v), y2: sy(v) }));
    axis.appendChild(svgEl("text", { x: MARGIN.left - 6, y: sy(v) + 4, "text-anchor": "end" }, tickLabel(v, y.step)));
  }
  for (const ms of timeTicks(x0, x1, Math.max(2, Math.floor(plotW / 90)))) {
    if (sx(ms) < MARGIN.left + 14) continue; // a label at the very edge would sit on the y axis
    axis.appendChild(svgEl("line", { x1: sx(ms), x2: sx(ms), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4 }));
    axis.appendChild(
      svgEl("text", { x: sx(ms), y: MARGIN.top + plotH + 16, "text-anchor": "middle" }, timeLabel(ms, x1 - x0)),
    );
  }
  axis.appendChild(svgEl("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH }));
  svg.appendChild(axis);

  // Alert markers: a triangle under the plot per transition of a rule on this chart's metrics;
  // a faint band from firing to resolution (or to now) behind the lines.
  const markers = state.alerts.transitions.filter((a) => a.metric && chart.alert_metrics.includes(a.metric));
  const version = document.getElementById("version").value;
  const shown = markers.filter((a) => !version || !a.labels.model_version || a.labels.model_version === version);
  const firingSince = {};
  for (const a of shown) {
    if (a.state === "firing") firingSince[a.alert_id] = a.ts;
    else if (a.state === "resolved" && firingSince[a.alert_id] !== undefined) {
      band(svg, sx, firingSince[a.alert_id], a.ts, plotH);
      delete firingSince[a.alert_id];
    }
  }
  for (const start of Object.values(firingSince)) band(svg, sx, start, x1, plotH);

  // Deploys: one vertical line each, labelled with the version.
  for (const d of state.deploys) {
    if (d.ts < x0 || d.ts > x1) continue;
    const g = svgEl("g", { class: "deploy-group", "data-version": d.model_version });
    g.appendChild(svgEl("line", { class: "deploy", x1: sx(d.ts), x2: sx(d.ts), y1: MARGIN.top - 4, y2: MARGIN.top + plotH }));
    g.appendChild(svgEl("text", { class: "deploy-label", x: sx(d.ts) + 3, y: MARGIN.top + 6 }, `${d.kind} ${d.model_version}`));
    g.appendChild(svgEl("title", {}, `${d.kind} ${d.model_version} at ${new Date(d.ts).toLocaleString()}`));
    svg.appendChild(g);
  }

  for (const s of series) {
    const color = s.role === "threshold" ? THRESHOLD_COLOR : colorOf(s.model_version);
    const d = s.points.map(([t, v], i) => `${i ? "L" : "M"}${sx(t).toFixed(1)},${sy(v).toFixed(1)}`).join("");
    const attrs = { class: s.role === "threshold" ? "threshold" : "series", d, stroke: color };
    if (DASH[s.stat]) attrs["stroke-dasharray"] = DASH[s.stat];
    attrs["data-version"] = s.model_version;
    attrs["data-stat"] = s.stat;
    const path = svgEl("path", attrs);
    path.appendChild(svgEl("title", {}, `${s.model_version} ${s.stat}`));
    svg.appendChild(path);
    if (s.role !== "threshold" && s.points.length <= MAX_CIRCLES) {
      const g = svgEl("g", { fill: color });
      for (const [t, v] of s.points) g.appendChild(svgEl("circle", { class: "point", cx: sx(t), cy: sy(v), r: 2.2 }));
      svg.appendChild(g);
    }
  }
  if (!series.length) {
    svg.appendChild(svgEl("text", { class: "no-data", x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, "text-anchor": "middle" }, "no data in this range"));
  }

  for (const a of shown) {
    if (a.ts < x0 || a.ts > x1) continue;
    const cx = sx(a.ts);
    const cy = MARGIN.top + plotH + 26;
    const tri = svgEl("path", {
      class: `alert-marker state-${a.state}`,
      d: `M${cx - 5},${cy + 4}L${cx + 5},${cy + 4}L${cx},${cy - 5}Z`,
      "data-rule": a.rule,
    });
    tri.appendChild(svgEl("title", {}, `${a.rule} ${a.state} ${a.labels.model_version || ""}: value ${fmt(a.value)}, threshold ${fmt(a.threshold)}\n${new Date(a.ts).toLocaleString()}`));
    svg.appendChild(tri);
  }
  renderLegend(card.querySelector(".legend"), series);
}

function band(svg, sx, from, to, plotH) {
  const x = sx(from);
  svg.appendChild(svgEl("rect", { class: "alert-band", x, y: MARGIN.top, width: Math.max(sx(to) - x, 1), height: plotH }));
}

function renderLegend(legend, series) {
  legend.replaceChildren(
    ...series.map((s) => {
      const item = el("span", { class: "legend-item" });
      const swatch = el("span", { class: "swatch" });
      swatch.style.borderTopColor = s.role === "threshold" ? THRESHOLD_COLOR : colorOf(s.model_version);
      swatch.style.borderTopStyle = DASH[s.stat] ? "dashed" : "solid";
      item.append(swatch, `${s.model_version} ${s.stat}`);
      return item;
    }),
  );
}

// -- tooltip: values of every series at the nearest point in time --------------------------------
function showTooltip(key, svg, ev) {
  const scale = svg._scale;
  if (!scale || !scale.series.length) return;
  const box = svg.getBoundingClientRect();
  const px = ((ev.clientX - box.left) / box.width) * svg.viewBox.baseVal.width;
  const ms = scale.x0 + ((px - MARGIN.left) / scale.plotW) * (scale.x1 - scale.x0);
  const lines = [];
  let nearest = null;
  for (const s of scale.series) {
    let best = null;
    for (const p of s.points) if (!best || Math.abs(p[0] - ms) < Math.abs(best[0] - ms)) best = p;
    if (best && Math.abs(best[0] - ms) <= (scale.x1 - scale.x0) / 30) {
      lines.push(`${s.model_version} ${s.stat}: ${fmt(best[1])}`);
      if (!nearest || Math.abs(best[0] - ms) < Math.abs(nearest - ms)) nearest = best[0];
    }
  }
  const tip = document.getElementById("tooltip");
  svg.querySelector(".crosshair")?.remove();
  if (!lines.length) return hideTooltip(svg);
  const x = scale.sx(nearest);
  svg.appendChild(svgEl("line", { class: "crosshair", x1: x, x2: x, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom }));
  tip.textContent = `${new Date(nearest).toLocaleString([], { hour12: false })}\n${lines.join("\n")}`;
  tip.style.left = `${ev.clientX + 14}px`;
  tip.style.top = `${ev.clientY + 10}px`;
  tip.hidden = false;
}

function hideTooltip(svg) {
  svg.querySelector(".crosshair")?.remove();
  document.getElementById("tooltip").hidden = true;
}

// Long ranges change little between two refreshes: poll them less often (at most every minute).
function refreshInterval() {
  const range = document.getElementById("range").value;
  const unit = { m: 60e3, h: 3600e3, d: 86400e3 }[range.slice(-1)] || 1e3;
  const spanMs = parseFloat(range) * unit;
  return Math.max(REFRESH_MS, Math.min(60e3, spanMs / 1440));
}

// -- start ---------------------------------------------------------------------------------------
async function start() {
  try {
    state.charts = (await getJSON("/api/dashboard/charts")).charts;
  } catch (err) {
    document.getElementById("status").textContent = `cannot load charts: ${err.message}`;
    document.getElementById("status").classList.add("error");
    return;
  }
  for (const chart of state.charts) chartCard(chart);
  await refresh();
  let timer;
  const schedule = () => {
    clearInterval(timer);
    if (document.getElementById("auto").checked) timer = setInterval(refresh, refreshInterval());
  };
  schedule();
  document.getElementById("auto").addEventListener("change", schedule);
  document.getElementById("range").addEventListener("change", () => {
    refresh();
    schedule();
  });
  document.getElementById("version").addEventListener("change", refresh);
  let resizeTimer;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 150);
  });
}

document.addEventListener("DOMContentLoaded", start);
