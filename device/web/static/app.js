// The device page: polls the JSON API (live frame, status, samples, head history) and sends labels.
// Plain JavaScript, no build step. Polling stops while the tab is hidden, so nothing is encoded for nobody.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  classes: ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
  maxFps: 5, undoWindow: 10, role: "user", headVersion: null,
  live: null,          // the LiveFrameOut on screen
  selected: null,      // {frame_id, face} picked by a click
  multi: new Set(),    // labels picked in ambiguous mode
  samples: [],
  sentHead: {},        // sample_id -> head version when it was sent (to show the head moving after it)
};

async function api(path, opts = {}) {
  const r = await fetch(path, { credentials: "same-origin", ...opts });
  if (r.status === 401) { location.href = "/login"; throw new Error("not logged in"); }
  return r;
}
const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));

// ---- live view ------------------------------------------------------------------------------------
async function liveLoop() {
  for (;;) {
    const t0 = performance.now();
    if (!document.hidden) {
      try {  // one request per frame: the JPEG, and what it shows in the X-Live header
        const since = state.live ? state.live.frame_id : -1;
        const r = await api(`/live.jpg?since=${since}`);
        if (r.status === 200) await showFrame(JSON.parse(r.headers.get("X-Live")), await r.blob());
      } catch (e) { /* the next poll tries again */ }
    }
    await sleep(Math.max(0, 1000 / state.maxFps - (performance.now() - t0)));
  }
}

function showFrame(live, blob) {
  return new Promise((resolve) => {
    const url = URL.createObjectURL(blob);
    const img = $("frame");
    img.onload = () => {
      if (state.liveUrl) URL.revokeObjectURL(state.liveUrl);
      state.liveUrl = url;
      img.dataset.frameId = live.frame_id;
      $("waiting").hidden = true;
      state.live = live;
      drawOverlays();
      resolve();
    };
    img.onerror = () => { URL.revokeObjectURL(url); resolve(); };
    img.src = url;
  });
}

function drawOverlays() {
  const live = state.live;
  const box = $("overlays");
  $("frame-info").textContent = `frame ${live.frame_id} · ${live.faces.length} face(s) · ${fmtTime(live.timestamp)}`;
  while (box.children.length > live.faces.length) box.lastChild.remove();
  while (box.children.length < live.faces.length) {  // boxes are reused from frame to frame (steady hover/click)
    const d = document.createElement("div");
    d.className = "face";
    d.addEventListener("click", () => {
      const f = state.live.faces[Number(d.dataset.index)];
      if (!f) return;
      state.selected = { frame_id: state.live.frame_id, face: f.index };
      drawOverlays();
      showFace(f);
    });
    box.appendChild(d);
  }
  live.faces.forEach((f, i) => {
    const d = box.children[i];
    d.dataset.index = i;
    const [x, y, w, h] = f.box;
    Object.assign(d.style, { left: `${(100 * x) / live.width}%`, top: `${(100 * y) / live.height}%`,
                             width: `${(100 * w) / live.width}%`, height: `${(100 * h) / live.height}%` });
    d.title = `face ${f.index + 1}: ${f.label} (click to label this face)`;
    const sel = state.selected && state.selected.face === f.index;  // the label goes to the frame clicked
    d.classList.toggle("selected", Boolean(sel));
  });
  if (!state.selected) showFace(largest(live.faces));
}

function largest(faces) {
  return faces.reduce((a, f) => (!a || f.box[2] * f.box[3] > a.box[2] * a.box[3] ? f : a), null);
}

function showFace(f) {
  const el = $("face-info");
  if (!f) { el.innerHTML = '<span class="muted">no face in this frame</span>'; return; }
  const sel = state.selected ? `<b>selected:</b> face ${state.selected.face + 1} of frame ${state.selected.frame_id}` :
    "largest face of the newest frame";
  const bars = state.classes.map((c) => {
    const p = f.probabilities[c] ?? 0, inset = f.prediction_set.includes(c) ? " inset" : "";
    return `<div class="bar${inset}"><span class="name${inset}">${c}</span><span class="track"><span class="fill" style="width:${(100 * p).toFixed(1)}%"></span></span><span>${p.toFixed(2)}</span></div>`;
  }).join("");
  el.innerHTML = `<div>${sel}: <b>${esc(f.label)}</b> · prediction set {${f.prediction_set.map(esc).join(", ")}}</div>${bars}`;
}

// ---- labelling --------------------------------------------------------------------------------------
function buildButtons() {
  const box = $("label-buttons");
  box.innerHTML = "";
  state.classes.forEach((c, i) => {
    const b = document.createElement("button");
    b.innerHTML = `<kbd>${i + 1}</kbd>${c}`;
    b.dataset.label = c;
    b.addEventListener("click", () => pick(c));
    box.appendChild(b);
  });
}

function pick(label) {
  if ($("multi").checked) {
    state.multi.has(label) ? state.multi.delete(label) : state.multi.add(label);
    document.querySelectorAll("#label-buttons button").forEach((b) => b.classList.toggle("on", state.multi.has(b.dataset.label)));
  } else {
    sendLabel([label]);
  }
}

async function sendLabel(labels) {
  if (!labels.length) return;
  const body = { labels, annotator: $("annotator").value.trim() || null };
  if (state.selected) { body.frame_id = state.selected.frame_id; body.face = state.selected.face; }
  const r = await api("/v1/label", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const err = $("label-error");
  if (!r.ok) {
    const j = await r.json().catch(() => ({}));
    err.textContent = typeof j.detail === "string" ? j.detail : `could not label (${r.status})`;
    err.hidden = false;
    return;
  }
  err.hidden = true;
  state.selected = null;
  state.multi.clear();
  document.querySelectorAll("#label-buttons button").forEach((b) => b.classList.remove("on"));
  state.samplesAt = 0;
  await refreshSamples();
}

async function undoLast() {
  const held = state.samples.find((s) => s.state === "held");
  if (held) await undo(held.sample_id);
}

async function undo(id) {
  const r = await api(`/v1/label/${encodeURIComponent(id)}/undo`, { method: "POST" });
  if (!r.ok) {
    const j = await r.json().catch(() => ({}));
    $("label-error").textContent = j.detail || "too late to undo";
    $("label-error").hidden = false;
  }
  await refreshSamples();
}

async function refreshSamples() {
  try {
    const r = await api("/v1/samples");
    if (r.ok) { state.samples = await r.json(); renderSamples(); }
  } catch (e) { /* next time */ }
}

function renderSamples() {
  const now = Date.now() / 1000;
  $("samples").innerHTML = state.samples.slice(0, 6).map((s) => {
    const what = esc((s.labels && s.labels.length ? s.labels : [s.label]).join(" + "));
    let right = "";
    if (s.state === "held") {
      right = `held ${Math.max(0, s.publish_at - now).toFixed(0)} s <button class="undo" data-id="${esc(s.sample_id)}">Undo</button>`;
    } else if (s.state === "acked" || s.state === "sent") {
      const sentV = s.head_version_at_send;
      const moved = sentV != null && state.headVersion != null && state.headVersion > sentV;
      right = (s.state === "acked" ? "sent ✓ acknowledged" : "sent…") +
        (moved ? ` · <span class="learned">head v${sentV} → v${state.headVersion}</span>` : sentV != null ? ` · waiting for the update (head v${sentV})` : "");
    } else {
      right = s.state;
    }
    return `<div class="sample ${esc(s.state)}" data-state="${esc(s.state)}" data-id="${esc(s.sample_id)}"><span><b>${what}</b> · frame ${s.frame_id ?? "?"}${s.annotator ? " · " + esc(s.annotator) : ""}</span><span>${right}</span></div>`;
  }).join("");
  document.querySelectorAll("#samples button.undo").forEach((b) => b.addEventListener("click", () => undo(b.dataset.id)));
}

// ---- status and head history ----------------------------------------------------------------------
async function refreshStatus() {
  try {
    const r = await api("/v1/status");
    if (!r.ok) return;
    const s = await r.json();
    state.maxFps = s.web.live_max_fps;
    state.undoWindow = s.web.undo_window_s;
    state.role = s.web.role;
    if (s.web.classes) state.classes = s.web.classes;
    $("undo-window").textContent = state.undoWindow;
    $("device").textContent = `${s.device_id} · fleet ${s.fleet}`;
    const hv = $("head-version");
    if (state.headVersion !== null && s.head_version !== state.headVersion) {
      hv.classList.remove("moved"); void hv.offsetWidth; hv.classList.add("moved");
      refreshHeads();
    }
    state.headVersion = s.head_version;
    hv.textContent = `v${s.head_version}`;
    $("fps").textContent = (s.fps ?? 0).toFixed(1);
    $("camera-state").textContent = s.camera;
    $("camera-pill").className = "pill " + (s.camera === "ok" ? "ok" : s.camera === "failed" ? "bad" : "warn");
    $("broker-pill").className = "pill " + (s.broker_connected ? "ok" : "bad");
    $("broker-pill").title = s.broker;
    $("rollback").disabled = state.role !== "operator" || s.previous_head_version == null;
    $("rollback").title = state.role !== "operator" ? "needs the operator token" :
      s.previous_head_version == null ? "no previous head kept" : `back to v${s.previous_head_version}`;
    $("logout-form").hidden = s.web.auth === "none";
    const lat = Object.entries(s.latency_ms).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(" · ");
    const lu = s.last_update;
    const rows = [
      ["fps", (s.fps ?? 0).toFixed(2)], ["latency (ms, median)", lat || "–"],
      ["frames / dropped / faces", `${s.frames} / ${s.dropped_frames} / ${s.faces}`],
      ["camera", `${s.camera} (${s.camera_reopens} reopens)`],
      ["broker", `${s.broker_connected ? "connected" : "NOT connected"} · ${s.broker}`],
      ["head", `v${s.head_version} (${(s.head_sha256 || "").slice(0, 12)}) · previous ${s.previous_head_version ?? "–"}`],
      ["last update", lu ? `${lu.status} ${lu.kind || ""} v${lu.version ?? "?"} at ${fmtTime(lu.applied_at || lu.received_at)}${lu.reason ? " (" + lu.reason + ")" : ""}` : "none yet"],
      ["samples sent / held", `${s.samples_sent} / ${s.samples_held}`],
      ["bundle · backend", `${s.bundle_id} · ${s.backend}`], ["uptime", `${Math.round(s.uptime_s)} s`],
    ];
    $("status-rows").innerHTML = rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("");
    $("errors").innerHTML = s.errors.slice().reverse().map((e) => `<li>${esc(e)}</li>`).join("") || "<li>none</li>";
  } catch (e) { /* next time */ }
}

async function refreshHeads() {
  try {
    const r = await api("/v1/heads?limit=30");
    if (!r.ok) return;
    const h = await r.json();
    const rej = Object.entries(h.rejections).map(([k, v]) => `${k}: ${v}`).join(", ");
    $("rejections").textContent = `applied ${h.applied} · rollbacks ${h.rollbacks} · rejected ${rej || "none"}` +
      (h.blocked_up_to >= 0 ? ` · versions ≤ ${h.blocked_up_to} refused (rolled back)` : "");
    $("head-events").innerHTML = h.events.map((e) => {
      const ver = e.event === "rollback" ? `v${e.from_version} → v${e.version}` : e.version != null ? `v${e.version}` : "–";
      const upd = [e.kind, e.base_version != null ? `from v${e.base_version}` : "", e.source].filter(Boolean).join(" ");
      return `<tr class="${esc(e.event)}"><td>${fmtTime(e.time)}</td><td>${esc(e.event)}</td><td>${esc(ver)}</td><td>${esc(upd)}</td><td>${esc(e.reason ? e.reason + ": " + (e.message || "") : e.message || "")}</td></tr>`;
    }).join("") || '<tr><td colspan="5" class="muted">no update yet: running the bundle\'s head</td></tr>';
  } catch (e) { /* next time */ }
}

async function rollback() {
  if (!confirm("Roll the head back to the previous version? The current version will be refused from then on.")) return;
  const r = await api("/v1/rollback", { method: "POST" });
  const j = await r.json().catch(() => ({}));
  $("rollback-msg").textContent = r.ok ? j.message : `rollback refused: ${j.detail || r.status}`;
  await refreshStatus();
  await refreshHeads();
}

// ---- keys ---------------------------------------------------------------------------------------------
document.addEventListener("keydown", (ev) => {
  if (ev.target.tagName === "INPUT" && ev.target.type !== "checkbox") return;
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const n = parseInt(ev.key, 10);
  if (n >= 1 && n <= state.classes.length) { pick(state.classes[n - 1]); ev.preventDefault(); }
  else if (ev.key === "u" || ev.key === "U" || ev.key === "Backspace") { undoLast(); ev.preventDefault(); }
  else if (ev.key === "Enter" && $("multi").checked) { sendLabel([...state.multi]); ev.preventDefault(); }
  else if (ev.key === "m" || ev.key === "M") { $("multi").checked = !$("multi").checked; }
  else if (ev.key === "Escape") { state.selected = null; state.multi.clear(); if (state.live) drawOverlays(); }
});

async function every(ms, fn) { for (;;) { if (!document.hidden) await fn(); await sleep(ms); } }

// Polling rates are kept low: every request costs the device CPU that its camera loop could use.
async function pollSamples() {
  const busy = state.samples.some((s) => s.state === "held" || s.state === "sending" || s.state === "sent" ||
    (s.state === "acked" && s.head_version_at_send != null && !(state.headVersion > s.head_version_at_send)));
  const now = Date.now();
  if (busy || !state.samplesAt || now - state.samplesAt > 10000) { state.samplesAt = now; await refreshSamples(); }
  else renderSamples();  // the countdown and the head-moved note still update
}

(async function main() {
  $("rollback").addEventListener("click", rollback);
  await refreshStatus();
  buildButtons();
  refreshHeads();
  refreshSamples();
  every(1500, refreshStatus);
  every(1000, pollSamples);
  every(15000, refreshHeads);
  liveLoop();
})();
