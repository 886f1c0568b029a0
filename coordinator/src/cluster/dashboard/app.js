// The sluice dashboard: jobs, one job (rates over time, workers, failed
// files, versions) and tables, read from the coordinator's JSON API on the
// same listener. No dependencies; charts are plain SVG.
"use strict";

// Errors the page hit, kept on <html> so that a test (or a curious user)
// can see them in the DOM.
function noteError(message) {
  const el = document.documentElement;
  const seen = el.getAttribute("data-js-error");
  el.setAttribute("data-js-error", seen ? seen + " | " + message : message);
}
window.addEventListener("error", (e) => noteError(String(e.message)));
window.addEventListener("unhandledrejection", (e) => {
  if (!(e.reason instanceof Unauthorized)) noteError(String(e.reason));
});

const TOKEN_KEY = "sluice.token";
const REFRESH_MS = 2000;
const VERSIONS_SHOWN = 25;

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- API -----------------------------------------------------------------

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    showAuth(token ? "That token was not accepted." : "");
    throw new Unauthorized("a token is needed");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, body.error || response.statusText);
  return body;
}

function showAuth(message) {
  const form = document.getElementById("auth");
  document.getElementById("auth-error").textContent = message;
  form.hidden = false;
  document.getElementById("auth-token").focus();
}

document.getElementById("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = document.getElementById("auth-token").value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  document.getElementById("auth").hidden = true;
  route();
});

// ---- formatting ------------------------------------------------------------

const nf = new Intl.NumberFormat("en-US");
function n(x) {
  return x == null ? "–" : nf.format(x);
}
function bytes(b) {
  if (b == null) return "–";
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (b >= 1000 && i < units.length - 1) {
    b /= 1000;
    i++;
  }
  return (i === 0 ? b : b.toFixed(b < 10 ? 2 : b < 100 ? 1 : 0)) + " " + units[i];
}
function duration(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const pad = (v) => String(v).padStart(2, "0");
  return h > 0 ? h + ":" + pad(m) + ":" + pad(sec) : m + ":" + pad(sec);
}
function rate(x, unit) {
  if (x == null || !isFinite(x)) return "–";
  const digits = x >= 100 ? 0 : x >= 10 ? 1 : 2;
  return x.toFixed(digits) + " " + unit;
}
function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}
function finished(p) {
  return (p.files_done || 0) + (p.files_failed || 0) + (p.files_skipped || 0);
}
function running(state) {
  return state === "running" || state === "planning";
}

// ---- DOM helpers -----------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function stateBadge(state) {
  return h("span", { class: "state state-" + state, "data-state": state }, state.replace(/_/g, " "));
}

function progressBar(p) {
  const total = p.files_total || 0;
  const done = finished(p);
  const pct = total > 0 ? (100 * done) / total : 0;
  const failPct = total > 0 ? (100 * (p.files_failed || 0)) / total : 0;
  const fill = h("div", { class: "fill" });
  fill.style.width = pct.toFixed(2) + "%";
  const fail = h("div", { class: "fail" });
  fail.style.left = Math.max(0, pct - failPct).toFixed(2) + "%";
  fail.style.width = failPct.toFixed(2) + "%";
  const label = total > 0 ? pct.toFixed(1) + "%" + (p.planning_done ? "" : " (planning)") : "planning";
  return h("div", { class: "bar", role: "progressbar", "aria-valuenow": pct.toFixed(1), "data-progress": pct.toFixed(1) }, fill, fail, h("span", {}, label));
}

function table(columns, rows, empty) {
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null, style: null }, c.title)));
  const cols = h("colgroup", {}, columns.map((c) => {
    const col = h("col");
    if (c.width) col.style.width = c.width;
    return col;
  }));
  const body = rows.length
    ? rows.map((r, i) => h("tr", r.attrs || {}, columns.map((c) => {
        const v = c.cell(r.data, i);
        return h("td", { class: [c.num ? "num" : "", c.wrap ? "wrap" : ""].join(" ").trim() || null, title: c.tip ? c.tip(r.data) : null }, v);
      })))
    : [h("tr", {}, h("td", { class: "empty", colspan: String(columns.length) }, empty))];
  return h("table", {}, cols, h("thead", {}, head), h("tbody", {}, body));
}

// Replace the contents of the element with id `id` (kept in place, so the
// layout does not jump while figures update).
function fill(id, ...content) {
  const el = document.getElementById(id);
  if (el) el.replaceChildren(...content.flat());
}

// ---- charts ------------------------------------------------------------------

const CW = 600;
const CH = 140;
const PAD = { l: 44, r: 8, t: 8, b: 18 };

// Rates from cumulative samples: [{t, v}] with v per second.
function rates(samples, key, scale) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].seconds - samples[i - 1].seconds;
    if (dt <= 0) continue;
    const dv = samples[i][key] - samples[i - 1][key];
    out.push({ t: samples[i].seconds, v: Math.max(0, dv / dt) * scale });
  }
  return out;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function chart(points, unit) {
  const svg = s("svg", { viewBox: `0 0 ${CW} ${CH}`, role: "img" });
  const w = CW - PAD.l - PAD.r;
  const hgt = CH - PAD.t - PAD.b;
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? Math.max(points[points.length - 1].t, t0 + 1) : 1;
  const vmax = niceMax(Math.max(0, ...points.map((p) => p.v)));
  for (const f of [0, 0.5, 1]) {
    const y = PAD.t + hgt * (1 - f);
    svg.append(s("line", { class: "grid", x1: PAD.l, x2: CW - PAD.r, y1: y, y2: y }));
    svg.append(s("text", { class: "axis", x: PAD.l - 4, y: y + 3, "text-anchor": "end" }, compact(vmax * f)));
  }
  svg.append(s("text", { class: "axis", x: PAD.l, y: CH - 4 }, duration(t0)));
  svg.append(s("text", { class: "axis", x: CW - PAD.r, y: CH - 4, "text-anchor": "end" }, duration(t1)));
  if (points.length > 1) {
    const x = (t) => PAD.l + (w * (t - t0)) / (t1 - t0);
    const y = (v) => PAD.t + hgt * (1 - v / vmax);
    const line = points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    const area = `${x(points[0].t).toFixed(1)},${y(0)} ${line} ${x(points[points.length - 1].t).toFixed(1)},${y(0)}`;
    svg.append(s("polygon", { class: "area", points: area }));
    svg.append(s("polyline", { class: "line", points: line }));
  } else {
    svg.append(s("text", { class: "axis", x: CW / 2, y: CH / 2, "text-anchor": "middle" }, "collecting…"));
  }
  svg.setAttribute("aria-label", unit);
  return svg;
}

function compact(v) {
  if (v >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

// ---- pages -------------------------------------------------------------------

let timers = [];
let generation = 0;

function every(ms, fn) {
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    try {
      await fn();
      setStatus("updated " + new Date().toLocaleTimeString());
    } catch (e) {
      if (e instanceof Unauthorized) return;
      setStatus(e instanceof ApiError ? e.message : "cannot reach the coordinator: " + e.message);
    }
  };
  tick();
  timers.push(setInterval(tick, ms));
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function route() {
  generation++;
  timers.forEach(clearInterval);
  timers = [];
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").map(decodeURIComponent);
  document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === (parts[0] || "jobs")));
  const main = document.getElementById("main");
  main.replaceChildren();
  if (parts[0] === "jobs" && parts[1]) return jobPage(main, parts[1]);
  if (parts[0] === "tables" && parts[1]) return tablePage(main, parts[1]);
  if (parts[0] === "tables") return tablesPage(main);
  return jobsPage(main);
}
window.addEventListener("hashchange", route);

function jobsPage(main) {
  document.title = "Jobs · sluice";
  main.append(h("h1", {}, "Jobs"), h("p", { class: "muted" }, "Every job this coordinator knows, newest first."), h("div", { id: "jobs" }));
  const columns = [
    { title: "Job", width: "19%", cell: (j) => h("a", { href: "#/jobs/" + encodeURIComponent(j.job_id), class: "mono" }, j.job_id), tip: (j) => j.job_id },
    { title: "State", width: "140px", cell: (j) => stateBadge(j.state) },
    { title: "Table", width: "16%", cell: (j) => h("a", { class: "mono", href: "#/tables/" + encodeURIComponent(j.table_uri) }, j.table_uri), tip: (j) => j.table_uri },
    { title: "Progress", width: "15%", cell: (j) => progressBar(j.progress) },
    { title: "Done / failed / total", num: true, width: "14%", cell: (j) => `${n(j.progress.files_done)} / ${n(j.progress.files_failed)} / ${n(j.progress.files_total)}${j.progress.planning_done ? "" : "+"}` },
    { title: "Rows", num: true, cell: (j) => n(j.progress.rows) },
    { title: "Data", num: true, cell: (j) => bytes(j.progress.bytes) },
    { title: "Elapsed", num: true, cell: (j) => duration(j.seconds) },
    { title: "ETA", num: true, cell: (j) => (running(j.state) ? duration(j.eta_seconds) : "–") },
  ];
  every(REFRESH_MS, async () => {
    const { jobs } = await api("/v1/jobs");
    fill("jobs", table(columns, jobs.map((j) => ({ data: j, attrs: { "data-job": j.job_id } })), "No jobs yet. Submit one with sluice submit or POST /v1/jobs."));
  });
}

function jobPage(main, id) {
  document.title = id + " · sluice";
  const cancel = h("button", { class: "danger", id: "cancel", hidden: true, onclick: () => cancelJob(id) }, "Cancel job");
  main.append(
    h("div", { class: "row" }, h("h1", { class: "grow mono", id: "job-id" }, id), h("span", { id: "job-state" }), cancel),
    h("p", { class: "muted", id: "job-message" }, "\u00a0"),
    h("div", { id: "job-bar" }),
    h("dl", { class: "facts", id: "job-facts" }),
    h("h2", {}, "Throughput"),
    h("div", { class: "charts" },
      ["files", "rows", "bytes"].map((k) => h("div", { class: "chart card" }, h("h3", {}, h("span", {}, { files: "Files / s", rows: "Rows / s", bytes: "MB / s" }[k]), h("span", { class: "now", id: "now-" + k }, "–")), h("div", { id: "chart-" + k })))),
    h("h2", {}, "Workers"),
    h("div", { id: "job-workers" }),
    h("div", { class: "row" }, h("h2", { class: "grow" }, "Failed files ", h("span", { class: "muted", id: "errors-count" })),
      h("input", { type: "search", id: "errors-filter", placeholder: "filter by file or reason", "aria-label": "filter failed files" })),
    h("div", { id: "job-errors" }),
    h("h2", {}, "Table versions written ", h("span", { class: "muted", id: "versions-count" })),
    h("div", { id: "job-versions" }),
  );
  let filter = "";
  let typing;
  document.getElementById("errors-filter").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      filter = e.target.value.trim();
      loadErrors(id, filter).catch(() => {});
    }, 250);
  });
  let lastMark = null;
  every(REFRESH_MS, async () => {
    let job;
    try {
      job = await api("/v1/jobs/" + encodeURIComponent(id));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) fill("job-message", h("span", { class: "bad", "data-missing": id }, e.message));
      throw e;
    }
    const p = job.progress;
    fill("job-state", stateBadge(job.state));
    fill("job-message", job.message || (running(job.state) ? "running" : "\u00a0"));
    fill("job-bar", progressBar(p));
    document.getElementById("cancel").hidden = !running(job.state) || job.message === "cancelling";
    const facts = [
      ["Table", h("a", { class: "mono", title: job.table_uri, href: "#/tables/" + encodeURIComponent(job.table_uri) }, job.table_uri)],
      ["Files done", n(p.files_done)],
      ["Files failed", n(p.files_failed)],
      ["Files skipped", n(p.files_skipped)],
      ["Files seen", n(p.files_total) + (p.planning_done ? "" : "+")],
      ["Rows committed", n(p.rows)],
      ["Data read", bytes(p.bytes)],
      ["Shards", `${n(p.shards_done)} / ${n(p.shards_total)}`],
      ["Commits", n(p.commits)],
      ["Table version", n(p.table_version)],
      ["Elapsed", duration(job.seconds)],
      ["ETA", running(job.state) ? duration(job.eta_seconds) : "–"],
      ["Files / s", rate(job.files_per_second, "")],
      ["Submitted", when(job.submitted_ms)],
    ];
    fill("job-facts", facts.map(([k, v]) => h("div", { "data-fact": k }, h("dt", {}, k), h("dd", {}, v))));
    const tasks = [loadHistory(id), loadWorkers(id)];
    // Failed files and versions are read again only when a commit landed
    // (failures are recorded with the commit they belong to) or the job's
    // state changed: the error ledger of a big job is not small.
    const mark = `${job.state} ${p.commits} ${p.files_failed}`;
    if (mark !== lastMark) tasks.push(loadErrors(id, filter), loadVersions(id));
    lastMark = mark;
    await Promise.all(tasks);
  });
}

async function cancelJob(id) {
  if (!confirm(`Cancel job ${id}? Files in flight are finished and committed; the rest are not ingested.`)) return;
  const button = document.getElementById("cancel");
  button.disabled = true;
  try {
    await api("/v1/jobs/" + encodeURIComponent(id) + "/cancel", { method: "POST" });
    setStatus("cancel requested");
  } catch (e) {
    setStatus("cancel failed: " + e.message);
    button.disabled = false;
  }
}

// What the coordinator keeps of a job it runs (history, workers, versions),
// or null after showing why not in `ids` (a job that ran under an earlier
// leader: 404).
async function kept(id, what, ids) {
  try {
    return await api("/v1/jobs/" + encodeURIComponent(id) + "/" + what);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
    for (const target of ids) fill(target, h("p", { class: "empty" }, e.message));
    return null;
  }
}

async function loadHistory(id) {
  const history = await kept(id, "history", ["chart-files", "chart-rows", "chart-bytes"]);
  if (!history) return;
  const series = {
    files: rates(history.samples, "files", 1),
    rows: rates(history.samples, "rows", 1),
    bytes: rates(history.samples, "bytes", 1e-6),
  };
  for (const [k, points] of Object.entries(series)) {
    fill("chart-" + k, chart(points, k));
    const last = points.length ? points[points.length - 1].v : null;
    fill("now-" + k, last == null ? "–" : rate(last, ""));
  }
}

async function loadWorkers(id) {
  const body = await kept(id, "workers", ["job-workers"]);
  if (!body) return;
  const columns = [
    { title: "Worker", width: "20%", cell: (w) => h("span", { class: "mono" }, w.worker_id), tip: (w) => w.worker_id },
    { title: "State", width: "130px", cell: (w) => stateBadge(w.state) },
    { title: "Shards held / taken / done", num: true, width: "18%", cell: (w) => `${n(w.shards_held)} / ${n(w.shards_taken)} / ${n(w.shards_finished)}` },
    { title: "Files done", num: true, cell: (w) => n(w.files_done) },
    { title: "Failed", num: true, cell: (w) => n(w.files_failed) },
    { title: "Rows", num: true, cell: (w) => n(w.rows) },
    { title: "Data", num: true, cell: (w) => bytes(w.bytes) },
    { title: "Files / s", num: true, cell: (w) => rate(w.files_per_second, "") },
    { title: "Last seen", num: true, cell: (w) => (w.seconds_since_seen == null ? "gone" : w.seconds_since_seen.toFixed(1) + " s ago") },
  ];
  fill("job-workers", table(columns, body.workers.map((w) => ({ data: w, attrs: { "data-worker": w.worker_id } })), "No worker has taken a shard yet."));
}

async function loadErrors(id, filter) {
  const q = "?limit=500" + (filter ? "&contains=" + encodeURIComponent(filter) : "");
  const body = await api("/v1/jobs/" + encodeURIComponent(id) + "/errors" + q);
  const shown = body.errors.length;
  fill("errors-count", filter ? `(${n(body.matching)} of ${n(body.total)} match)` : `(${n(body.total)})` + (shown < body.total ? `, first ${n(shown)} shown` : ""));
  const columns = [
    { title: "File", width: "40%", wrap: true, cell: (e) => h("span", { class: "mono" }, e.uri) },
    { title: "Kind", width: "80px", cell: (e) => e.kind || "–" },
    { title: "Reason", wrap: true, cell: (e) => e.reason },
    { title: "Recorded", width: "170px", cell: (e) => (e.recorded_at ? new Date(e.recorded_at).toLocaleString() : "–") },
  ];
  fill("job-errors", table(columns, body.errors.map((e) => ({ data: e, attrs: { "data-error": e.uri } })), filter ? "No failed file matches." : "No file has failed."));
}

async function loadVersions(id) {
  const body = await kept(id, "versions", ["job-versions"]);
  if (!body) return;
  const shown = body.versions.slice(0, VERSIONS_SHOWN);
  fill("versions-count", `(${n(body.commits)} commits` + (shown.length < body.commits ? `, newest ${n(shown.length)} shown)` : ")"));
  const columns = [
    { title: "Version", num: true, width: "90px", cell: (v) => n(v.version) },
    { title: "Rows", num: true, cell: (v) => n(v.rows) },
    { title: "Files", num: true, cell: (v) => n(v.files) },
    { title: "Failed", num: true, cell: (v) => n(v.failed) },
    { title: "Fragments", num: true, cell: (v) => n(v.fragments) },
    { title: "Committed", width: "200px", cell: (v) => when(v.committed_ms) },
  ];
  fill("job-versions", table(columns, shown.map((v) => ({ data: v, attrs: { "data-version": String(v.version) } })), "Nothing committed yet."));
}

function tablesPage(main) {
  document.title = "Tables · sluice";
  main.append(h("h1", {}, "Tables"), h("p", { class: "muted" }, "Tables under the storage root, and those jobs wrote."), h("div", { id: "tables" }));
  const columns = [
    { title: "Table", width: "24%", cell: (t) => h("a", { href: "#/tables/" + encodeURIComponent(t.table_uri) }, t.name), tip: (t) => t.name },
    { title: "Location", cell: (t) => h("span", { class: "mono" }, t.table_uri), tip: (t) => t.table_uri },
    { title: "Version", num: true, width: "100px", cell: (t) => n(t.version) },
    { title: "Rows", num: true, width: "140px", cell: (t) => n(t.rows) },
  ];
  every(10000, async () => {
    const { tables } = await api("/v1/tables");
    fill("tables", table(columns, tables.map((t) => ({ data: t, attrs: { "data-table": t.table_uri } })), "No tables yet."));
  });
}

function tablePage(main, uri) {
  document.title = uri + " · sluice";
  const q = "?table=" + encodeURIComponent(uri);
  main.append(
    h("h1", { class: "mono" }, uri),
    h("dl", { class: "facts", id: "table-facts" }),
    h("h2", {}, "Rows per kind"),
    h("div", { id: "table-kinds" }),
    h("h2", {}, "Versions (newest 20)"),
    h("div", { id: "table-versions" }),
  );
  every(10000, async () => {
    const [d, v] = await Promise.all([api("/v1/tables/describe" + q), api("/v1/tables/versions" + q + "&limit=20")]);
    const facts = [["Rows", n(d.rows)], ["Version", n(d.version)], ["Columns", n(d.columns.length)], ["Failed files", n(d.failed_files)]];
    fill("table-facts", facts.map(([k, val]) => h("div", { "data-fact": k }, h("dt", {}, k), h("dd", {}, val))));
    const kinds = Object.entries(d.rows_per_kind || {}).sort((a, b) => b[1] - a[1]);
    fill("table-kinds", table([{ title: "Kind", cell: (k) => k[0] }, { title: "Rows", num: true, cell: (k) => n(k[1]) }], kinds.map((k) => ({ data: k, attrs: { "data-kind": k[0] } })), "No rows."));
    const columns = [
      { title: "Version", num: true, width: "90px", cell: (x) => n(x.version) },
      { title: "When", width: "200px", cell: (x) => new Date(x.timestamp).toLocaleString() },
      { title: "Operation", width: "110px", cell: (x) => x.operation || "–" },
      { title: "Job", cell: (x) => (x.job_id ? h("a", { href: "#/jobs/" + encodeURIComponent(x.job_id), class: "mono" }, x.job_id) : "–") },
      { title: "Rows", num: true, cell: (x) => n(x.rows) },
      { title: "Files", num: true, cell: (x) => n(x.files) },
      { title: "Failed", num: true, cell: (x) => n(x.failed) },
    ];
    fill("table-versions", table(columns, v.versions.map((x) => ({ data: x, attrs: { "data-version": String(x.version) } })), "No versions."));
  });
}

route();
