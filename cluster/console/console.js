// The microturn console: one OpenAI Realtime session over the gateway's /v1/realtime WebSocket.
// Plain script, no build step. The browser cannot set an Authorization header on a WebSocket, so
// the key travels as the subprotocol `openai-insecure-api-key.<key>` (as with OpenAI's own
// server); `?microturn_events=1` adds microturn's own events (turn causes, latencies, UI).
"use strict";

const $ = (id) => document.getElementById(id);
const RATE = 24000;
const JITTER_S = 0.12;   // playback starts this far ahead of "now", absorbing network jitter
const FRAME_EVERY_MS = 1000;  // camera frames -> conversation.item.create input_image (microturn VideoFrame)

const state = {
  ws: null, t0: performance.now(), turnNo: 0, counters: {},
  mic: null, camera: null, playCtx: null, nextPlay: 0, sources: new Set(),
  speechStoppedAt: null, responseStartedAt: null, firstAudioPending: false, bargeInAt: null,
  userItem: null, modelLi: null, modelAudioMs: 0,
};
window.microturnConsole = state;  // for tests and curious people

// -- timeline ---------------------------------------------------------------------------------

function seconds() { return ((performance.now() - state.t0) / 1000).toFixed(2) + " s"; }

function row(lane, text, cls) {
  const li = document.createElement("li");
  li.className = cls || lane;
  li.dataset.lane = lane;
  li.innerHTML = `<span class="t">${seconds()}</span><span class="lane">${lane}</span><span class="what"></span>`;
  li.querySelector(".what").textContent = text;
  const list = $("timeline");
  list.appendChild(li);
  while (list.children.length > 600) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight;
  return li;
}

function count(name, by = 1) {
  state.counters[name] = (state.counters[name] || 0) + by;
  let dd = document.querySelector(`#counters dd[data-name="${name}"]`);
  if (!dd) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    dd = document.createElement("dd");
    dd.dataset.name = name;
    $("counters").append(dt, dd);
  }
  dd.textContent = state.counters[name];
}

function latency(what, serverMs, hereMs, cause) {
  const tr = document.createElement("tr");
  const cells = [state.turnNo, what, serverMs == null ? "" : `${serverMs} ms`,
                 hereMs == null ? "" : `${Math.round(hereMs)} ms`, cause || ""];
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
  $("latencies").querySelector("tbody").prepend(tr);
}

// -- generative UI cards ------------------------------------------------------------------------

function card(component, props) {
  const div = document.createElement("div");
  div.className = "card";
  const kind = document.createElement("span");
  kind.className = "kind";
  kind.textContent = component;
  div.appendChild(kind);
  const add = (tag, text) => { const el = document.createElement(tag); el.textContent = text; div.appendChild(el); return el; };
  if (props.title) add("h3", props.title);
  if (component === "card") {
    add("p", props.body || "");
    if (props.image_url) { const img = document.createElement("img"); img.src = props.image_url; img.alt = props.title || ""; div.appendChild(img); }
  } else if (component === "list") {
    const list = document.createElement(props.ordered ? "ol" : "ul");
    for (const item of props.items || []) { const li = document.createElement("li"); li.textContent = item; list.appendChild(li); }
    div.appendChild(list);
  } else if (component === "table") {
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const c of props.columns || []) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
    const body = table.createTBody();
    for (const r of props.rows || []) { const tr = body.insertRow(); for (const c of r) tr.insertCell().textContent = c == null ? "" : c; }
    div.appendChild(table);
    if (props.caption) add("p", props.caption);
  } else if (component === "chart") {
    const values = (props.series && props.series[0] && props.series[0].values) || props.values || [];
    const max = Math.max(1e-9, ...values.map(Math.abs));
    const w = 320, h = 100, n = Math.max(values.length, 1);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("width", "100%");
    if (props.kind === "line") {
      const line = document.createElementNS(svg.namespaceURI, "polyline");
      line.setAttribute("points", values.map((v, i) => `${(i + 0.5) * w / n},${h - (v / max) * (h - 4)}`).join(" "));
      svg.appendChild(line);
    } else {
      values.forEach((v, i) => {
        const r = document.createElementNS(svg.namespaceURI, "rect");
        const bh = Math.abs(v) / max * (h - 4);
        r.setAttribute("x", i * w / n + 2); r.setAttribute("width", Math.max(1, w / n - 4));
        r.setAttribute("y", h - bh); r.setAttribute("height", bh);
        svg.appendChild(r);
      });
    }
    div.appendChild(svg);
  } else {
    add("pre", JSON.stringify(props, null, 2));
  }
  $("cards").prepend(div);
  row("ui", `${component}: ${props.title || ""}`, "tool");
}

// -- playback: a jitter buffer of scheduled 24 kHz buffers, flushed on barge-in ----------------

function playContext() {
  if (!state.playCtx) state.playCtx = new AudioContext();
  return state.playCtx;
}

function play(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  const ctx = playContext();
  const buf = ctx.createBuffer(1, pcm.length, RATE);
  const ch = buf.getChannelData(0);
  let peak = 0;
  for (let i = 0; i < pcm.length; i++) { ch[i] = pcm[i] / 32768; peak = Math.max(peak, Math.abs(ch[i])); }
  $("model-level").value = peak;
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  const now = ctx.currentTime;
  if (state.nextPlay < now + 0.02) state.nextPlay = now + JITTER_S;  // underrun: rebuild the cushion
  src.start(state.nextPlay);
  state.nextPlay += buf.duration;
  state.sources.add(src);
  src.onended = () => state.sources.delete(src);
  $("buffered").textContent = `${Math.round((state.nextPlay - now) * 1000)} ms`;
  state.modelAudioMs += buf.duration * 1000;
}

function flushPlayback(why) {
  if (!state.sources.size) return;
  for (const src of state.sources) { try { src.stop(); } catch (e) { /* already ended */ } }
  const dropped = state.sources.size;
  state.sources.clear();
  state.nextPlay = 0;
  $("buffered").textContent = "0 ms";
  row("model", `playback flushed (${why}, ${dropped} buffers)`);
}

// -- the connection -------------------------------------------------------------------------------

function send(event) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(event));
}

// "semantic_vad:low" -> { type: "semantic_vad", eagerness: "low" }; "" -> null (the server's default)
function turnDetectionOf(choice) {
  if (!choice) return null;
  const [type, eagerness] = choice.split(":");
  return eagerness ? { type, eagerness } : { type };
}

function connect(key, turnDetection) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/v1/realtime?model=microturn&microturn_events=1`;
  const protocols = ["realtime"];
  if (key) protocols.push("openai-insecure-api-key." + key);
  const ws = new WebSocket(url, protocols);
  state.ws = ws;
  $("status").textContent = "connecting…";
  ws.onopen = () => {
    $("status").textContent = "connected";
    row("session", "connected");
    send({ type: "session.update", session: {
      type: "realtime", output_modalities: ["audio"],
      audio: { input: { format: { type: "audio/pcm", rate: RATE },
                        turn_detection: turnDetectionOf(turnDetection) },
               output: { format: { type: "audio/pcm", rate: RATE } } } } });
    for (const id of ["mic", "camera", "tool"]) $(id).disabled = false;
  };
  ws.onclose = (e) => {
    $("status").textContent = `disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`;
    row("session", `closed ${e.code} ${e.reason || ""}`, "error");
    stopMic(); stopCamera();
    for (const id of ["mic", "camera", "tool"]) $(id).disabled = true;
  };
  ws.onerror = () => row("session", "WebSocket error (wrong API key?)", "error");
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
}

function onEvent(e) {
  count(e.type);
  const here = performance.now();
  switch (e.type) {
    case "session.created": row("session", `session ${e.session.id}`); break;
    case "session.updated": {
      const turn = e.session.audio.input.turn_detection;
      row("session", `turn detection: ${turn ? turn.type + (turn.eagerness ? `, eagerness ${turn.eagerness}` : "") : "server default"}`);
      break;
    }
    case "microturn.session": row("session", `microturn session ${e.session_id.slice(0, 8)} on ${e.replica}, ${e.tick_ms} ms ticks, policy ${e.turn_policy}`); break;
    case "input_audio_buffer.speech_started":
      row("user", `speech started (at ${(e.audio_start_ms / 1000).toFixed(1)} s of your audio)`);
      if (state.sources.size) { state.bargeInAt = here; flushPlayback("you spoke"); }
      break;
    case "input_audio_buffer.speech_stopped":
      row("user", `speech stopped (at ${(e.audio_end_ms / 1000).toFixed(1)} s)`);
      state.speechStoppedAt = here;
      break;
    case "response.created":
      state.turnNo += 1;
      state.responseStartedAt = here;
      state.firstAudioPending = true;
      state.modelAudioMs = 0;
      state.modelLi = row("model", `response ${state.turnNo} started`);
      break;
    case "response.output_audio.delta":
      if (state.firstAudioPending) {
        state.firstAudioPending = false;
        if (state.speechStoppedAt) latency("first audio after your speech stopped", null, here - state.speechStoppedAt);
        row("model", "model audio arriving");
      }
      play(e.delta);
      if (state.modelLi) state.modelLi.querySelector(".what").textContent = `response ${state.turnNo}: ${(state.modelAudioMs / 1000).toFixed(1)} s of audio`;
      break;
    case "response.output_audio_transcript.delta": count("transcript characters", e.delta.length); break;
    case "response.done": {
      const r = e.response;
      const why = r.status_details && r.status_details.reason ? ` (${r.status_details.reason})` : "";
      row("model", `response ${r.status}${why}`, r.status === "cancelled" ? "turn" : "model");
      if (r.status === "cancelled") {
        flushPlayback(r.status_details && r.status_details.reason || "cancelled");
        if (state.bargeInAt) latency("barge-in -> response cancelled", null, here - state.bargeInAt);
      }
      state.bargeInAt = null;
      state.modelLi = null;
      break;
    }
    case "microturn.turn":
      row("turn", `${e.kind} — cause ${e.cause || "?"}, epoch ${e.epoch}, tick ${e.tick}`);
      break;
    case "microturn.latency":
      if (e.kind === "turn_taking") latency("turn taking", e.ms, e.wall_ms, e.cause);
      else if (e.kind === "interruption_stop") latency("interruption stop", null, e.ms, "gateway clock");
      break;
    case "microturn.ui": card(e.component, e.props || {}); break;
    case "microturn.transcript": row(e.role === "user" ? "user" : "model", `transcript: ${e.text}`); break;
    case "microturn.woven": row("tool", `result woven into the model's input (job ${e.job_id.slice(0, 8)})`); break;
    case "conversation.item.added": {
      const it = e.item;
      if (it.type === "function_call") row("tool", `call ${it.name}(${it.arguments || ""}) [${it.call_id}]`);
      else if (it.type === "function_call_output") row("tool", `result [${it.call_id}]: ${String(it.output).slice(0, 160)}`);
      else if (it.type === "message" && it.role === "user" && it.content.some((c) => c.type === "input_text"))
        row("user", `text: ${it.content.map((c) => c.text || "").join(" ")}`);
      break;
    }
    case "response.function_call_arguments.done": row("tool", `the model calls your function ${e.name}(${e.arguments})`); break;
    case "error": row("error", `${e.error.code || e.error.type}: ${e.error.message}${e.error.param ? " [" + e.error.param + "]" : ""}`, "error"); break;
    default: break;
  }
}

// -- microphone -----------------------------------------------------------------------------------

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function startMic() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true } });
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/console/audio-worklets.js");
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "pcm-capture");
  node.port.onmessage = (m) => {
    $("mic-level").value = m.data.peak;
    count("audio sent (100 ms)");
    send({ type: "input_audio_buffer.append", audio: toBase64(m.data.pcm) });
  };
  source.connect(node);
  state.mic = { stream, ctx, node };
  playContext().resume();
  row("user", `microphone on (${ctx.sampleRate} Hz -> 24 kHz PCM16)`);
}

function stopMic() {
  if (!state.mic) return;
  state.mic.stream.getTracks().forEach((t) => t.stop());
  state.mic.ctx.close();
  state.mic = null;
  row("user", "microphone off");
}

// -- camera: JPEG frames as user input_image items (microturn VideoFrame) -------------------------

async function startCamera() {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 } });
  const video = $("preview");
  video.srcObject = stream;
  video.classList.add("on");
  await video.play();
  const canvas = document.createElement("canvas");
  canvas.width = 160; canvas.height = 120;
  const timer = setInterval(() => {
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    const url = canvas.toDataURL("image/jpeg", 0.7);
    send({ type: "conversation.item.create",
           item: { type: "message", role: "user", content: [{ type: "input_image", image_url: url }] } });
    count("camera frames sent");
  }, FRAME_EVERY_MS);
  state.camera = { stream, timer };
  row("user", "camera on (160x120 JPEG, 1 frame/s)");
}

function stopCamera() {
  if (!state.camera) return;
  clearInterval(state.camera.timer);
  state.camera.stream.getTracks().forEach((t) => t.stop());
  $("preview").classList.remove("on");
  state.camera = null;
  row("user", "camera off");
}

// -- wiring ---------------------------------------------------------------------------------------

function toggle(button, on, off, isOn) {
  return async () => {
    try {
      if (isOn()) { off(); } else { await on(); }
    } catch (err) {
      row("error", `${button.id}: ${err}`, "error");
    }
    button.classList.toggle("on", isOn());
    button.textContent = `${button.id === "mic" ? "Microphone" : "Camera"} ${isOn() ? "off" : "on"}`;
  };
}

window.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.hash.slice(1));
  $("api-key").value = params.get("key") || localStorage.getItem("microturn.apiKey") || "";
  $("connect-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("api-key").value.trim();
    if (key) localStorage.setItem("microturn.apiKey", key);
    if (state.ws) state.ws.close();
    playContext().resume();
    connect(key, $("turn-detection").value);
  });
  $("mic").addEventListener("click", toggle($("mic"), startMic, stopMic, () => !!state.mic));
  $("camera").addEventListener("click", toggle($("camera"), startCamera, stopCamera, () => !!state.camera));
  $("tool").addEventListener("click", () => {
    const query = prompt("web_search query", "weather in Paris");
    if (!query) return;
    send({ type: "conversation.item.create",
           item: { type: "function_call", name: "web_search", call_id: "call_" + Date.now(),
                   arguments: JSON.stringify({ query }) } });
  });
});
