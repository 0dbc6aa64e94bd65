// StreamLens dashboard: the metrics API's own answers drawn as SVG charts. No build step,
// no library: this file is embedded in the metrics-api binary and served at /assets/.
"use strict";

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569", "#ea580c"];
const KEY_STORE = "streamlens.key";
const MAX_ITEMS = 1000; // the API's default QUERY_MAX_LIMIT
const STEP_MINUTES = { "1m": 1, "5m": 5, "1h": 60, "1d": 1440 };

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
let timer = null;

// What each chart shows: which answer, which figure, how to print it, and whether a bucket
// without a window means zero (counts) or nothing known (rates, latencies).
const CHARTS = [
  { id: "requests", title: "Requests", from: "series", value: (m) => m.requests, format: compact, zero: true },
  { id: "error-rate", title: "Error rate", from: "series", value: (m) => m.error_rate, format: percent },
  { id: "timeout-rate", title: "Timeout rate", from: "series", value: (m) => m.timeout_rate, format: percent },
  { id: "latency", title: "Latency p50 / p95 / p99 (all calls)", from: "percentiles", format: millis },
  { id: "latency-p95", title: "Latency p95", from: "series", value: (m) => m.p95_latency_ms, format: millis },
  { id: "tokens", title: "Tokens (prompt + completion)", from: "series", value: (m) => m.total_tokens, format: compact, zero: true },
  { id: "cost", title: "Estimated cost (USD)", from: "series", value: (m) => m.estimated_cost_usd, format: dollars, zero: true },
];

function compact(v) {
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}
function percent(v) { return (v * 100).toFixed(v < 0.1 ? 1 : 0) + "%"; }
function share(v) { return +(v * 100).toFixed(3) + "%"; }
function millis(v) { return v >= 1000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms"; }
function dollars(v) { return "$" + (v >= 100 ? v.toFixed(0) : v >= 0.1 || v === 0 ? v.toFixed(2) : v.toFixed(4)); }

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// Settings come from the form; a key (and other settings) can also come once in the URL
// fragment (#key=...&range=60), which never reaches a server log.
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("key")) localStorage.setItem(KEY_STORE, params.get("key"));
  for (const name of ["tenant", "range", "granularity", "group", "refresh"]) {
    if (params.has(name)) $(name).value = params.get(name);
  }
  if (location.hash) history.replaceState(null, "", location.pathname);
  $("key").value = localStorage.getItem(KEY_STORE) || "";
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// The step that keeps a range within the API's item limit for a handful of series.
function granularity(rangeMinutes) {
  const chosen = $("granularity").value;
  if (chosen !== "auto") return chosen;
  if (rangeMinutes <= 120) return "1m";
  if (rangeMinutes <= 720) return "5m";
  if (rangeMinutes <= 10080) return "1h";
  return "1d";
}

async function get(path, params) {
  const key = $("key").value.trim();
  const tenant = $("tenant").value.trim();
  if (tenant) params.set("tenant_id", tenant);
  const response = await fetch(path + "?" + params, {
    headers: key ? { Authorization: "Bearer " + key } : {},
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const fields = (body.fields || []).map((f) => f.field + " " + f.reason).join("; ");
    throw new Error(`${response.status}: ${body.message || response.statusText}${fields ? " (" + fields + ")" : ""}`);
  }
  return body;
}

async function refresh() {
  const key = $("key").value.trim();
  if (key) localStorage.setItem(KEY_STORE, key);
  if (!key && !$("tenant").value.trim()) {
    status("Enter an API key to see its tenant's metrics.");
    return;
  }
  const minutes = Number($("range").value);
  const step = granularity(minutes);
  const to = new Date();
  const from = new Date(to.getTime() - minutes * 60_000);
  const range = () => new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
  const query = (groupBy) => {
    const p = range();
    p.set("granularity", step);
    p.set("group_by", groupBy);
    p.set("limit", String(MAX_ITEMS));
    return p;
  };
  try {
    const [series, totals, summary, rules, slos] = await Promise.all([
      get("/v1/metrics", query($("group").value)),
      get("/v1/metrics", query("tenant")),
      get("/v1/summary", range()),
      get("/v1/alerts/rules", new URLSearchParams()),
      get("/v1/slos", new URLSearchParams()),
    ]);
    drawAlerts(rules.rules, slos.slos);
    drawTotals(summary);
    drawDetails(summary);
    drawCharts(series.metrics, totals.metrics, step, from, to);
    const truncated = series.count >= MAX_ITEMS ? " (oldest buckets cut: pick a larger step)" : "";
    status(`Tenant ${summary.tenant_id} · ${series.count} points · step ${step} · updated ${new Date().toLocaleTimeString()}${truncated}`);
  } catch (e) {
    status("Could not load metrics: " + e.message, true);
  }
}

// Above the tiles: the rules firing now, and each objective's budget and burn.
function drawAlerts(rules, slos) {
  const lines = [];
  for (const r of rules.filter((r) => r.state === "firing")) {
    const format = (v) => r.metric.endsWith("_rate") ? percent(v) : r.metric.endsWith("_ms") ? millis(v)
      : r.metric === "cost_usd" ? dollars(v) : compact(v);
    const scope = [r.route, r.model].filter(Boolean).join(" · ");
    lines.push(["alert", r.id, "bad", `Firing: ${r.name}`,
      ` — ${r.metric} ${format(r.value)} ${r.op} ${format(r.threshold)} over ${r.window_minutes} min${scope ? " (" + scope + ")" : ""}`]);
  }
  for (const s of slos) {
    const burn = Object.fromEntries(s.burn_rates.map((b) => [b.window, b.burn_rate]));
    const firing = s.alerts.filter((a) => a.state === "firing").map((a) => a.severity);
    const what = s.slo.indicator === "latency" ? `${share(s.slo.target)} under ${millis(s.slo.threshold_ms)}`
      : `${share(s.slo.target)} succeed`;
    lines.push(["slo", s.slo.id, firing.length ? "bad" : s.budget_left < 0.25 ? "warn" : "",
      `${s.slo.name} (${what}): `,
      `${percent(Math.max(s.budget_left, 0))} of the 30-day budget left` +
      (s.budget_left < 0 ? ` (overspent ${(-s.budget_left * 100).toFixed(0)}%)` : "") +
      ` · burn ${burn["1h"].toFixed(1)}× over 1 h, ${burn["5m"].toFixed(1)}× over 5 min` +
      (firing.length ? ` · firing: ${firing.join(", ")}` : "")]);
  }
  $("alerts").replaceChildren(...lines.map(([kind, id, level, name, text]) => {
    const p = document.createElement("p");
    p.dataset[kind] = String(id);
    if (level) p.className = level;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    p.append(label, text);
    return p;
  }));
}

function drawTotals(summary) {
  const t = summary.totals;
  const tiles = [
    ["Requests", compact(t.requests)],
    ["Error rate", percent(t.error_rate)],
    ["Timeout rate", percent(t.timeout_rate)],
    ["Latency p95", millis(t.p95_latency_ms)],
    ["Tokens", compact(t.total_tokens)],
    ["Estimated cost", dollars(t.estimated_cost_usd)],
  ];
  $("totals").replaceChildren(...tiles.map(([name, value]) => {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.innerHTML = '<div class="name"></div><div class="value"></div>';
    tile.firstChild.textContent = name;
    tile.lastChild.textContent = value;
    return tile;
  }));
}

// Below the tiles: what the totals are made of, and the models the cost leaves out.
function drawDetails(summary) {
  const t = summary.totals;
  const counts = (map) => Object.entries(map || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([name, n]) => `${name} ${compact(n)}`).join(", ");
  const lines = [];
  if (t.errors > 0) lines.push(["errors", "Errors by type", counts(t.error_types)]);
  if (Object.keys(t.providers || {}).length) lines.push(["providers", "Requests by provider", counts(t.providers)]);
  lines.push(["tokens", "Tokens", `prompt ${compact(t.prompt_tokens)} (cache reads ${compact(t.cached_prompt_tokens)}, cache writes ${compact(t.cache_creation_tokens)}), completion ${compact(t.completion_tokens)} (reasoning ${compact(t.reasoning_tokens)})`]);
  const byType = Object.entries(t.cost_by_type_usd || {}).filter(([, usd]) => usd > 0);
  if (byType.length) {
    lines.push(["cost", "Cost by token type", byType.sort((a, b) => b[1] - a[1])
      .map(([type, usd]) => `${type.replace("_", " ")} ${dollars(usd)}`).join(", ")]);
  }
  const unpriced = summary.unpriced_models || [];
  if (unpriced.length) {
    lines.push(["unpriced", "No price", unpriced.map((r) => `${r.name} (${compact(r.unpriced)} calls, ${compact(r.unpriced_tokens)} tokens)`).join(", ") +
      ": counted as unpriced, not in the estimated cost"]);
  }
  $("details").replaceChildren(...lines.map(([id, name, text]) => {
    const p = document.createElement("p");
    p.dataset.detail = id;
    if (id === "unpriced") p.className = "warn";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name + ": ";
    p.append(label, text);
    return p;
  }));
}

function seriesName(m) {
  return [m.route, m.model].filter((x) => x != null).join(" · ") || m.tenant_id;
}

// Buckets from the first to the last one that holds a window: the minutes still open have
// no window yet, and drawing them as zero would show a drop that is not there.
function buckets(items, step) {
  const starts = items.map((m) => Date.parse(m.window_start));
  if (!starts.length) return [];
  const width = STEP_MINUTES[step] * 60_000;
  const out = [];
  for (let t = Math.min(...starts); t <= Math.max(...starts); t += width) out.push(t);
  return out;
}

// name -> values per bucket (null where nothing is known).
function lines(chart, series, totals, times) {
  const index = new Map(times.map((t, i) => [t, i]));
  const out = new Map();
  const put = (name, m, value) => {
    if (!out.has(name)) out.set(name, times.map(() => (chart.zero ? 0 : null)));
    out.get(name)[index.get(Date.parse(m.window_start))] = value;
  };
  if (chart.from === "percentiles") {
    for (const m of totals) {
      put("p50", m, m.p50_latency_ms);
      put("p95", m, m.p95_latency_ms);
      put("p99", m, m.p99_latency_ms);
    }
  } else {
    for (const m of series) put(seriesName(m), m, chart.value(m));
  }
  return out;
}

function drawCharts(series, totals, step, from, to) {
  const times = buckets(series.concat(totals), step);
  const names = [...new Set(series.map(seriesName))].sort();
  const colour = (name, i) => (names.includes(name) ? PALETTE[names.indexOf(name) % PALETTE.length] : PALETTE[i]);
  $("charts").replaceChildren(...CHARTS.map((chart) => {
    const figure = document.createElement("figure");
    const caption = document.createElement("figcaption");
    caption.textContent = chart.title;
    figure.appendChild(caption);
    const data = lines(chart, series, totals, times);
    figure.appendChild(plot(chart, data, times, colour, from, to));
    const legend = document.createElement("div");
    legend.className = "legend";
    [...data.keys()].forEach((name, i) => {
      const item = document.createElement("span");
      item.style.setProperty("--c", colour(name, i));
      item.textContent = name;
      legend.appendChild(item);
    });
    figure.appendChild(legend);
    return figure;
  }));
}

function plot(chart, data, times, colour, from, to) {
  const W = 460, H = 190, L = 52, R = 10, T = 10, B = 22;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, "data-chart": chart.id, role: "img", "aria-label": chart.title });
  const values = [...data.values()].flat().filter((v) => v != null);
  if (!values.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg).textContent =
      "No windows in this range yet";
    return svg;
  }
  const top = niceCeiling(Math.max(...values));
  const t0 = times[0], t1 = Math.max(times[times.length - 1], t0 + 1);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, svg);
    el("text", { x: L - 6, y: y(v) + 3, "text-anchor": "end" }, svg).textContent = chart.format(v);
  }
  const long = to - from > 86_400_000;
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const d = new Date(t);
    const label = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    el("text", { x: x(t), y: H - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, svg).textContent =
      long ? `${d.getMonth() + 1}/${d.getDate()} ${label}` : label;
  }
  [...data.entries()].forEach(([name, vals], i) => {
    let d = "", pen = "M", points = 0;
    vals.forEach((v, j) => {
      if (v == null) { pen = "M"; return; }
      d += `${pen}${x(times[j]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L";
      points++;
    });
    const path = el("path", { d, class: "line", stroke: colour(name, i), "data-series": name, "data-points": points }, svg);
    el("title", {}, path).textContent = name;
    // A single point draws no line: mark it.
    if (points === 1) {
      const j = vals.findIndex((v) => v != null);
      el("circle", { cx: x(times[j]), cy: y(vals[j]), r: 2.5, fill: colour(name, i) }, svg);
    }
  });
  return svg;
}

function niceCeiling(v) {
  if (v <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (v <= m * magnitude) return m * magnitude;
  return 10 * magnitude;
}

function schedule() {
  clearInterval(timer);
  const seconds = Number($("refresh").value);
  if (seconds > 0) timer = setInterval(refresh, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  readFragment();
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  for (const id of ["range", "granularity", "group"]) $(id).addEventListener("change", refresh);
  $("refresh").addEventListener("change", schedule);
  schedule();
  refresh();
});
