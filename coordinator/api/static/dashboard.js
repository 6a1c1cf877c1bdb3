// The coordinator dashboard: polls the JSON API and redraws tiles, three canvas charts and two tables.
// No libraries and no network beyond this coordinator, so it works on an offline cluster.
"use strict";

const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh")) || 5000;
const $ = (id) => document.getElementById(id);

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

// One line chart on a canvas, sized for the device pixel ratio; x is unix time, y any number (nulls skipped).
function drawChart(canvas, xs, ys, opts = {}) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pts = xs.map((x, i) => [x, ys[i]]).filter((p) => p[1] != null && isFinite(p[1]));
  const pad = { l: 44, r: 8, t: 8, b: 22 };
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#868e96";
  if (pts.length === 0) { ctx.fillText("no data yet", w / 2 - 30, h / 2); return; }
  let x0 = pts[0][0], x1 = pts[pts.length - 1][0];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  let lo = opts.zero ? 0 : Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
  if (hi === lo) { hi += 1; lo = opts.zero ? 0 : lo - 1; }
  // Round tick steps (1, 2 or 5 × 10^k; whole numbers for counts) so the axis reads at a glance.
  const raw = (hi - lo) / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  if (opts.integer) step = Math.max(1, Math.round(step));
  const y0 = Math.floor(lo / step) * step, y1 = Math.ceil(hi / step) * step;
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const Y = (y) => h - pad.b - ((y - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#e9ecef"; ctx.lineWidth = 1;
  for (let v = y0; v <= y1 + step / 2; v += step) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(fmtAxis(v), 4, y + 4);
  }
  [x0, (x0 + x1) / 2, x1].forEach((x, i) => {
    const label = new Date(x * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const tw = ctx.measureText(label).width;
    ctx.fillText(label, [X(x), X(x) - tw / 2, X(x) - tw][i], h - 6);
  });
  ctx.strokeStyle = canvas.dataset.color || "#1971c2"; ctx.lineWidth = 2; ctx.lineJoin = "round";
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
  ctx.stroke();
  if (opts.fill) {
    ctx.lineTo(X(pts[pts.length - 1][0]), Y(y0)); ctx.lineTo(X(pts[0][0]), Y(y0)); ctx.closePath();
    ctx.globalAlpha = 0.12; ctx.fillStyle = ctx.strokeStyle; ctx.fill(); ctx.globalAlpha = 1;
  }
}

function renderProgress(p) {
  $("run-id").textContent = p.run_id;
  $("global-step").textContent = fmtInt(p.global_step);
  $("step-of").textContent = p.total_steps ? `of ${fmtInt(p.total_steps)} (${(100 * p.global_step / p.total_steps).toFixed(1)}%)` : "";
  $("eta").textContent = p.total_steps && p.global_step >= p.total_steps ? "done" : fmtDuration(p.eta_seconds);
  $("alive-peers").textContent = fmtInt(p.alive_peers);
  $("samples-per-second").textContent = fmtNum(p.samples_per_second, 1);
  $("samples-total").textContent = fmtInt(p.samples_total);
  $("loss").textContent = fmtNum(p.loss, 3);
  $("updated").textContent = fmtTime(p.updated);
}

function renderHistory(history) {
  const t = history.map((h) => h.time);
  drawChart($("loss-chart"), t, history.map((h) => h.loss));
  drawChart($("sps-chart"), t, history.map((h) => h.samples_per_second), { zero: true, fill: true });
  drawChart($("peers-chart"), t, history.map((h) => h.alive_peers), { zero: true, fill: true, integer: true });
}

function renderPeers(peers) {
  const body = $("leaderboard").tBodies[0];
  const total = peers.reduce((s, p) => s + p.samples, 0) || 1;
  body.replaceChildren(...peers.slice(0, 50).map((p, i) => {
    const tr = el("tr");
    tr.append(el("td", i + 1));
    const who = el("td", p.name); who.title = p.peer_id; tr.append(who);
    tr.append(el("td", fmtInt(p.samples)));
    const share = el("td"); const bar = el("span", null, "bar");
    bar.style.width = `${Math.max(2, (60 * p.samples) / total)}px`;
    share.append(bar, ` ${(100 * p.samples / total).toFixed(1)}%`); tr.append(share);
    tr.append(el("td", fmtDuration(p.seconds_online)));
    tr.append(el("td", fmtNum(p.samples_per_second, 1)));
    const status = el("td", p.banned ? "⊘ banned" : p.alive ? "● online" : "offline",
      p.banned ? "banned" : p.alive ? "alive" : "gone");
    if (p.banned) status.title = p.ban_reason;  // why: shown on hover (reporters, rounds, outcome)
    tr.append(status);
    return tr;
  }));
  $("peers-total").textContent = `${peers.length} seen in all`;
}

function renderCheckpoints(ckpts) {
  const body = $("checkpoints").tBodies[0];
  body.replaceChildren(...ckpts.slice().reverse().map((c) => {
    const tr = el("tr");
    tr.append(el("td", c.name), el("td", fmtInt(c.step)), el("td", fmtTime(c.created)));
    tr.append(el("td", fmtBytes(c.files.reduce((s, f) => s + f.size, 0))));
    const links = el("td");
    for (const f of c.files) {
      const a = el("a", f.path); a.href = `/checkpoints/${c.name}/${f.path}`; a.title = `sha256 ${f.sha256}`;
      links.append(a, " ");
    }
    tr.append(links);
    return tr;
  }));
  $("download-cmd").textContent = `python -m coordinator download --from ${location.origin} --out ./model`;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function refresh() {
  try {
    const [p, h, peers, ck] = await Promise.all([getJSON("/api/v1/progress"), getJSON("/api/v1/history"),
      getJSON("/api/v1/peers"), getJSON("/api/v1/checkpoints")]);
    renderProgress(p); renderHistory(h.history); renderPeers(peers.peers); renderCheckpoints(ck.checkpoints);
    $("status").textContent = "live";
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (e) {
    $("status").textContent = `coordinator unreachable (${e.message})`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
