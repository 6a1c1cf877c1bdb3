// The coordinator dashboard: polls the JSON API and redraws the join line, the tiles, four uPlot charts (three over
// time, the checkpoints' downstream scores over global steps) and two tables. uPlot is vendored under /static/vendor/ and nothing is fetched from anywhere but this coordinator, so the
// page works on an offline cluster.
"use strict";

const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh")) || 5000;
const CHART_HEIGHT = 180;
// History samples further apart than this many typical spacings mean the coordinator (or its monitor) was down in
// between: the charts break the line there instead of drawing a straight one across a time with no data.
const GAP_FACTOR = 3;
const $ = (id) => document.getElementById(id);
// A growth switch (the run's model grew at a global step, growth.schedule): a dashed vertical line on every chart.
const SWITCH_COLOR = "#ae3ec9";

function fmtInt(x) { return x == null ? "–" : Math.round(x).toLocaleString("en-US"); }
function fmtNum(x, digits) { return x == null || !isFinite(x) ? "–" : Number(x).toFixed(digits); }
function fmtDuration(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return m ? `${m}m ${s % 60}s` : `${s}s`;
}
function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function fmtTime(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "never"; }
// A time of today as a clock time; an older one with its date (checkpoints outlive the day they were saved).
function fmtWhen(t) {
  const d = new Date(t * 1000);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}
function fmtAxis(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return Number.isInteger(v) ? String(v) : a >= 10 ? v.toFixed(0) : String(Number(v.toFixed(2)));
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

// uPlot's columns [times, ...one array per key] from the history, with a null row inside every gap (uPlot leaves
// nulls undrawn). The typical spacing is the median one, so a few slow monitor passes do not hide a real outage.
function chartColumns(history, keys) {
  const diffs = history.slice(1).map((h, i) => h.time - history[i].time).sort((a, b) => a - b);
  const limit = diffs.length >= 2 ? GAP_FACTOR * diffs[Math.floor(diffs.length / 2)] : Infinity;
  const cols = [[], ...keys.map(() => [])];
  history.forEach((h, i) => {
    if (i && h.time - history[i - 1].time > limit) {
      cols[0].push((h.time + history[i - 1].time) / 2);
      keys.forEach((_, j) => cols[j + 1].push(null));
    }
    cols[0].push(h.time);
    keys.forEach((k, j) => cols[j + 1].push(h[k] == null ? null : h[k]));
  });
  return cols;
}

// The growth switches in the history: the first point of each later stage, as {time, step, stage}. One history runs
// across stages (each point carries its stage), so a switch is where the stage goes up.
function stageSwitches(history) {
  const found = [];
  history.forEach((h, i) => {
    if (i && (h.stage || 0) > (history[i - 1].stage || 0)) found.push({ time: h.time, step: h.step, stage: h.stage });
  });
  return found;
}

// A uPlot plugin that draws ``u.switches`` ([{at, stage}], ``at`` on the chart's x scale) as dashed vertical lines
// labelled with the stage they start; switches outside the x range are not drawn.
const switchMarkers = { hooks: { draw: [(u) => {
  const marks = u.switches || [];
  if (!marks.length) return;
  const { ctx, bbox } = u;
  ctx.save();
  ctx.strokeStyle = SWITCH_COLOR; ctx.fillStyle = SWITCH_COLOR;
  ctx.lineWidth = 2; ctx.setLineDash([6, 4]); ctx.font = "11px sans-serif";
  ctx.textAlign = "left"; ctx.textBaseline = "top";  // uPlot leaves its axes' alignment set on the context
  for (const m of marks) {
    const x = Math.round(u.valToPos(m.at, "x", true));
    if (!(x >= bbox.left && x <= bbox.left + bbox.width)) continue;
    ctx.beginPath(); ctx.moveTo(x, bbox.top); ctx.lineTo(x, bbox.top + bbox.height); ctx.stroke();
    ctx.fillText(`stage ${m.stage}`, x + 4, bbox.top + 2);
  }
  ctx.restore();
}] } };

// Gives a chart its switch markers and says them on its host (what is drawn, for a reader of the page and its tests).
function setSwitches(host, chart, marks) {
  chart.switches = marks;
  host.dataset.switches = marks.map((m) => m.at).join(" ");
  host.dataset.switchColor = SWITCH_COLOR;
}

const CHART_SPECS = [
  { id: "loss-chart", key: "loss", label: "loss", digits: 3 },
  { id: "sps-chart", key: "samples_per_second", label: "samples/s", digits: 1, zero: true },
  { id: "peers-chart", key: "alive_peers", label: "alive peers", digits: 0, zero: true, integer: true },
];

// One uPlot chart in ``host``, kept as wide as its card by a ResizeObserver.
function makeChart(host, spec) {
  const color = host.dataset.color;
  const y = { auto: true };
  if (spec.zero) y.range = (u, min, max) => uPlot.rangeNum(0, max > 0 ? max : 1, 0.1, true);
  const axis = { size: 48, values: (u, splits) => splits.map(fmtAxis), grid: { stroke: "#e9ecef" } };
  if (spec.integer) axis.incrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];
  const chart = new uPlot({
    width: host.clientWidth,
    height: CHART_HEIGHT,
    cursor: { drag: { x: false, y: false } },  // no zoom: the next refresh would undo it
    plugins: [switchMarkers],
    scales: { x: { time: true }, y },
    axes: [{ grid: { stroke: "#e9ecef" } }, axis],
    series: [
      { value: (u, t) => (t == null ? "–" : new Date(t * 1000).toLocaleTimeString()) },
      { label: spec.label, stroke: color, width: 2, fill: spec.zero ? color + "1f" : undefined,
        value: (u, v) => fmtNum(v, spec.digits) },
    ],
  }, [[], []], host);
  new ResizeObserver(() => chart.setSize({ width: host.clientWidth, height: CHART_HEIGHT })).observe(host);
  return chart;
}

// Draws the history on the time charts; returns its growth switches (for the scores chart, which is over steps).
function renderHistory(charts, history) {
  const cols = chartColumns(history, CHART_SPECS.map((s) => s.key));
  const switches = stageSwitches(history);
  const marks = switches.map((s) => ({ at: s.time, stage: s.stage }));
  CHART_SPECS.forEach((spec, j) => {
    const host = $(spec.id);
    host.classList.toggle("no-data", !cols[j + 1].some((v) => v != null));
    setSwitches(host, charts[j], marks);
    charts[j].setData([cols[0], cols[j + 1]]);
  });
  return switches;
}

// The background evaluation's scores: one line per downstream task (its headline metric) of the checkpoints over
// global steps. Held-out pretraining metrics stay out (losses, on another scale); so do failed evaluations.
const SCORE_COLORS = ["#7048e8", "#0c8599", "#e67700", "#c2255c", "#5c940d", "#1864ab"];

function scoreColumns(evaluations) {
  const done = evaluations.filter((e) => e.done).sort((a, b) => a.step - b.step);
  const keys = [];
  for (const e of done) {
    for (const s of e.scores) {
      const key = `${s.task} ${s.metric}`;
      if (s.role === "checkpoint" && s.headline && !keys.includes(key)) keys.push(key);
    }
  }
  const cols = [done.map((e) => e.step), ...keys.map((key) => done.map((e) => {
    const s = e.scores.find((x) => x.role === "checkpoint" && `${x.task} ${x.metric}` === key);
    return s && s.mean != null ? s.mean : null;
  }))];
  return { keys, cols };
}

// uPlot's series are fixed when a chart is made, so the chart is made anew when the set of tasks changes (the first
// evaluation arrives, or the coordinator is restarted with other tasks).
function makeScoreChart(host, keys) {
  const axis = { size: 48, values: (u, splits) => splits.map(fmtAxis), grid: { stroke: "#e9ecef" } };
  const chart = new uPlot({
    width: host.clientWidth,
    height: CHART_HEIGHT,
    cursor: { drag: { x: false, y: false } },
    plugins: [switchMarkers],
    scales: { x: { time: false }, y: { auto: true } },
    axes: [{ values: (u, splits) => splits.map(fmtAxis), grid: { stroke: "#e9ecef" } }, axis],
    series: [
      { label: "step", value: (u, v) => (v == null ? "–" : fmtInt(v)) },
      ...keys.map((key, i) => ({ label: key, stroke: SCORE_COLORS[i % SCORE_COLORS.length], width: 2,
        spanGaps: true, points: { show: true, size: 6 }, value: (u, v) => fmtNum(v, 3) })),
    ],
  }, [[], ...keys.map(() => [])], host);
  return chart;
}

function renderScores(state, evaluations, switches) {
  const host = $("scores-chart");
  const { keys, cols } = scoreColumns(evaluations);
  if (!state.chart || state.keys !== keys.join("|")) {
    if (state.chart) state.chart.destroy();
    state.chart = makeScoreChart(host, keys);
    if (!state.observer) {
      state.observer = new ResizeObserver(() => state.chart.setSize({ width: host.clientWidth, height: CHART_HEIGHT }));
      state.observer.observe(host);
    }
    state.keys = keys.join("|");
    host.dataset.colors = keys.map((_, i) => SCORE_COLORS[i % SCORE_COLORS.length]).join(" ");
  }
  host.classList.toggle("no-data", cols[0].length === 0);
  host.dataset.steps = cols[0].join(" ");  // what is drawn, for a reader of the page's source (and its tests)
  setSwitches(host, state.chart, switches.map((s) => ({ at: s.step, stage: s.stage })));
  state.chart.setData(cols);
}

// A checkpoint's scores cell: its tasks' headline means, "pending" before, or the failures with the last error.
function scoresCell(evaluation) {
  if (!evaluation) return el("td", "pending", "scores muted");
  if (!evaluation.done) {
    const td = el("td", `failed ×${evaluation.attempts}`, "scores failed");
    td.title = evaluation.error;
    return td;
  }
  const parts = evaluation.scores.filter((s) => s.role === "checkpoint" && s.headline)
    .map((s) => `${s.task} ${fmtNum(s.mean, 3)}`);
  return el("td", parts.join(" · ") || "–", "scores");
}

function renderRun(run) {
  $("join-cmd").textContent = run.join_command || "(this coordinator printed no join line)";
}

function renderProgress(p) {
  $("run-id").textContent = p.run_id;
  $("global-step").textContent = fmtInt(p.global_step);
  $("step-of").textContent = p.total_steps ? `of ${fmtInt(p.total_steps)} (${(100 * p.global_step / p.total_steps).toFixed(1)}%)` : "";
  const done = p.total_steps && p.global_step >= p.total_steps;
  // No live peer, no progress: a rate read off the history would promise a finish nobody is working towards.
  $("eta").textContent = done ? "done" : p.alive_peers > 0 ? fmtDuration(p.eta_seconds) : "–";
  $("eta-note").textContent = done || p.alive_peers > 0 ? "at the recent rate" : "no peer online";
  $("alive-peers").textContent = fmtInt(p.alive_peers);
  $("samples-per-second").textContent = fmtNum(p.samples_per_second, 1);
  $("samples-total").textContent = fmtInt(p.samples_total);
  $("loss").textContent = fmtNum(p.loss, 3);
  $("updated").textContent = fmtTime(p.updated);
}

// One row per entry the API returns (the rows are replaced, never appended, on every refresh).
function renderPeers(peers) {
  const body = $("leaderboard").tBodies[0];
  const total = peers.reduce((s, p) => s + p.samples, 0) || 1;
  body.replaceChildren(...peers.slice(0, 50).map((p, i) => {
    const tr = el("tr");
    tr.append(el("td", i + 1));
    const who = el("td"), name = el("span", p.name, "who");
    name.title = `${p.name}\npeer id ${p.peer_id}`;
    who.append(name, el("span", p.short_id, "id muted"));
    tr.append(who, el("td", fmtInt(p.samples), "num"));
    const share = el("td"); const bar = el("span", null, "bar");
    bar.style.width = `${Math.max(2, (60 * p.samples) / total)}px`;
    share.append(bar, ` ${(100 * p.samples / total).toFixed(1)}%`); tr.append(share);
    tr.append(el("td", fmtDuration(p.seconds_online)));
    tr.append(el("td", p.alive ? fmtNum(p.samples_per_second, 1) : "", "num sps"));  // offline: no rate at all
    const status = el("td", p.banned ? "⊘ banned" : p.alive ? "● online" : "offline",
      p.banned ? "banned" : p.alive ? "alive" : "gone");
    if (p.banned) status.title = p.ban_reason;  // why: shown on hover (reporters, rounds, outcome)
    tr.append(status);
    return tr;
  }));
  $("peers-total").textContent = `${peers.length} seen in all`;
}

// The command that downloads one export (resumable, sha256-verified): shown per form, and for the newest under the
// table, so a user copies a line instead of composing flags.
function exportCommand(name, form) {
  return `python -m coordinator download --from ${location.origin} --checkpoint ${name} --form ${form} --out ./${name}-${form}`;
}

// A checkpoint's built exports (smaller forms for inference): per form its name and size, opening to the download
// command and a link per file; "none yet" while the background exporter has built none.
function exportsCell(c) {
  const td = el("td", null, "exports");
  const forms = Object.keys(c.exports || {}).sort();
  if (!forms.length) td.append(el("span", "none yet", "muted"));
  for (const form of forms) {
    const files = c.exports[form].files, size = files.reduce((s, f) => s + f.size, 0);
    const box = el("details", null, "export"), list = el("ul", null, "files");
    box.dataset.form = form;
    box.append(el("summary", `${form} · ${fmtBytes(size)}`), el("code", exportCommand(c.name, form), "cmd"), list);
    for (const f of files) {
      const a = el("a", f.path); a.href = `/exports/${c.name}/${form}/${f.path}`; a.title = `sha256 ${f.sha256}`;
      const li = el("li"); li.append(a, el("span", ` ${fmtBytes(f.size)}`, "muted")); list.append(li);
    }
    td.append(box);
  }
  return td;
}

function renderCheckpoints(ckpts) {
  const body = $("checkpoints").tBodies[0];
  body.replaceChildren(...ckpts.slice().reverse().map((c) => {
    const tr = el("tr");
    // a checkpoint of a later growth stage says so beside its step (before and after a switch share the step)
    const step = c.stage ? `${fmtInt(c.step)} · stage ${c.stage}` : fmtInt(c.step);
    tr.dataset.stage = String(c.stage || 0);
    tr.append(el("td", c.name), el("td", step, "num"), el("td", fmtWhen(c.created)));
    tr.append(el("td", fmtBytes(c.files.reduce((s, f) => s + f.size, 0)), "num"), scoresCell(c.evaluation));
    const files = el("details"), list = el("ul", null, "files");
    files.append(el("summary", `${c.files.length} files`), list);
    for (const f of c.files) {
      const a = el("a", f.path); a.href = `/checkpoints/${c.name}/${f.path}`; a.title = `sha256 ${f.sha256}`;
      const li = el("li"); li.append(a, el("span", ` ${fmtBytes(f.size)}`, "muted")); list.append(li);
    }
    const cell = el("td"); cell.append(files); tr.append(exportsCell(c), cell);
    return tr;
  }));
  $("download-cmd").textContent = `python -m coordinator download --from ${location.origin} --out ./model`;
  const exported = ckpts.slice().reverse().find((c) => Object.keys(c.exports || {}).length);
  $("export-cmd").textContent = exported ? exportCommand(exported.name, Object.keys(exported.exports).sort()[0])
    : `python -m coordinator download --from ${location.origin} --checkpoint NAME --form FORM --out DIR`;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function refresh(charts, scores) {
  try {
    const [run, p, h, peers, ck, ev] = await Promise.all(["/api/v1/run", "/api/v1/progress", "/api/v1/history",
      "/api/v1/peers", "/api/v1/checkpoints", "/api/v1/evaluations"].map(getJSON));
    renderRun(run); renderProgress(p); const switches = renderHistory(charts, h.history); renderPeers(peers.peers);
    renderCheckpoints(ck.checkpoints); renderScores(scores, ev.evaluations, switches);
    $("status").textContent = "live";
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (e) {
    $("status").textContent = `coordinator unreachable (${e.message})`;
  } finally {
    setTimeout(() => refresh(charts, scores), REFRESH_MS);
  }
}

refresh(CHART_SPECS.map((spec) => makeChart($(spec.id), spec)), { chart: null, keys: null });
