// mmgt browser client: microphone → WebRTC (POST /offer) → the avatar's video and audio.
// No build step, no external scripts. Test mode (?test=1&seconds=N&report=/path) turns off the
// browser's audio processing, starts by itself, measures mouth motion against the received
// audio for each presented frame and POSTs the series as JSON to the report path.

const $ = (id) => document.getElementById(id);
const ui = {
  avatar: $("avatar"), photo: $("photo"), start: $("start"), stop: $("stop"),
  mute: $("mute"), record: $("record"), video: $("video"), status: $("status"), error: $("error"),
  notes: $("notes"),
  speechFile: $("speech-file"),
  recording: $("recording"), download: $("download"), motionReset: $("motion-reset"),
  motion: [...document.querySelectorAll("input[data-motion]")],
};
const params = new URLSearchParams(location.search);
const TEST = params.get("test") === "1";

// The live connection: {pc, mic, channel, remote, startedAt, firstFrameMs, sender, file}.
let conn = null;
const view = {
  connection: "idle", state: "", fps: null, latency: null, speech: false, task: "", speaking: "",
};

function render() {
  const parts = [view.connection];
  if (view.state) parts.push(view.state);
  if (view.fps !== null) parts.push(`${view.fps.toFixed(1)} fps`);
  if (view.latency !== null) parts.push(`latency ${view.latency} ms`);
  if (conn) parts.push(view.speech ? "speech" : "silence");
  if (view.speaking) parts.push(view.speaking);
  if (view.task) parts.push(view.task);
  ui.status.textContent = parts.join(" · ");
}

function showError(message) {
  ui.error.hidden = !message;
  ui.error.textContent = message || "";
}

async function errorText(resp) {
  const body = await resp.json().catch(() => null);
  return (body && body.error) || `HTTP ${resp.status} ${resp.statusText}`;
}

// The server lists only its public avatars; an uploaded photo is private to whoever holds its
// id, so this browser remembers the ids of its own uploads (dropping those the server evicted).
const UPLOADS_KEY = "mmgt.uploads";

function myUploads() {
  try {
    const ids = JSON.parse(localStorage.getItem(UPLOADS_KEY) || "[]");
    return Array.isArray(ids) ? ids.filter((id) => typeof id === "string") : [];
  } catch {
    return [];
  }
}

function rememberUploads(ids) {
  try {
    localStorage.setItem(UPLOADS_KEY, JSON.stringify(ids.slice(-32)));
  } catch {
    // storage disabled: uploads last for this page only
  }
}

async function loadAvatars(extra = []) {
  const resp = await fetch("/avatars");
  if (!resp.ok) return;
  const { avatars } = await resp.json();
  const mine = [...new Set([...myUploads(), ...extra])];
  const alive = await Promise.all(mine.map((id) => fetch(`/avatars/${encodeURIComponent(id)}`)
    .then((r) => r.ok, () => false)));
  const uploads = mine.filter((_, i) => alive[i]);
  rememberUploads(uploads);
  ui.avatar.replaceChildren(...avatars.map((id) => new Option(
    id === "default" ? "Bundled avatar" : id, id)),
  ...uploads.map((id) => new Option(`My photo ${id.slice(1, 7)}`, id)));
}

// Before a session (and after it) the stage shows the chosen avatar as the video will frame it.
function showPoster() {
  ui.video.poster = ui.avatar.value ? `/avatars/${encodeURIComponent(ui.avatar.value)}/image` : "";
}

// What the server noticed about the chosen photo (a face turned away, several people).
function showNotes(notes) {
  ui.notes.hidden = !notes.length;
  ui.notes.textContent = notes.length ? `About this photo: ${notes.join("; ")}.` : "";
}

async function showAvatar() {
  showPoster();
  const id = ui.avatar.value;
  const resp = id ? await fetch(`/avatars/${encodeURIComponent(id)}`).catch(() => null) : null;
  const info = resp && resp.ok ? await resp.json() : {};
  if (ui.avatar.value === id) showNotes(info.notes || []);  // not overtaken by another choice
}

async function uploadPhoto(file) {
  showError("");
  view.task = "preparing photo…";
  render();
  const form = new FormData();
  form.append("image", file);
  try {
    const resp = await fetch("/avatars", { method: "POST", body: form });
    if (!resp.ok) throw new Error(`upload refused: ${await errorText(resp)}`);
    const { id, notes } = await resp.json();
    await loadAvatars([id]);
    ui.avatar.value = id;
    showPoster();
    showNotes(notes || []);
  } catch (err) {
    showError(err.message);
  } finally {
    view.task = "";
    render();
  }
}

function iceGathered(pc, timeoutMs = 5000) {
  // aiortc takes no trickled candidates: send the offer once gathering is complete.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

// -- motion dials: sent with the offer and, when moved, on the data channel ------------------
const MOTION_KEY = "mmgt.motion";

function motionValues() {
  return Object.fromEntries(ui.motion.map((el) => [el.dataset.motion, Number(el.value)]));
}

function showMotion() {
  for (const el of ui.motion) el.nextElementSibling.textContent = Number(el.value).toFixed(1);
}

function loadMotion() {
  try {
    const saved = JSON.parse(localStorage.getItem(MOTION_KEY) || "{}");
    for (const el of ui.motion) {
      const v = saved[el.dataset.motion];
      if (typeof v === "number" && v >= Number(el.min) && v <= Number(el.max)) el.value = v;
    }
  } catch {
    // storage disabled or garbled: the defaults stay
  }
  showMotion();
}

function motionChanged(changes) {
  showMotion();
  try {
    localStorage.setItem(MOTION_KEY, JSON.stringify(motionValues()));
  } catch {
    // storage disabled: the dials last for this page only
  }
  if (conn && conn.channel && conn.channel.readyState === "open") {
    conn.channel.send(JSON.stringify({ type: "motion", ...changes }));
  }
}

function onEvent(event) {
  if (event.type === "stats") {
    // What the eye sees: new images per second (held images under load are not new).
    view.fps = event.image_fps ?? event.fps;
    view.latency = event.latency_ms;
  } else if (event.type === "state") {
    view.state = event.state === "running" ? "" : `${event.state} ${event.detail || ""}`.trim();
    if (event.state === "error" && conn) conn.failure = event.detail || "error";
  } else if (event.type === "vad") {
    view.speech = event.speech;
  } else if (event.type === "error") {
    showError(event.message);
  }
  render();
}

// WebRTC media never flowed: the browser and the server found no network path to each other.
const UNREACHABLE = "Could not reach the server's media port: WebRTC needs UDP between this " +
  "browser and the server, which a firewall or NAT blocks. Start the server with " +
  "--ice-server naming a TURN server (see the README).";
const CONNECT_TIMEOUT_MS = 30000; // as the server's connect timeout
// Firefox neither pairs with loopback addresses nor shows its own ones by default.
const FIREFOX_LOCALHOST = navigator.userAgent.includes("Firefox") &&
  ["localhost", "127.0.0.1", "[::1]"].includes(location.hostname);
const FIREFOX_LOCALHOST_HINT = "Firefox does not reach a WebRTC server on localhost with its " +
  "default settings: in about:config set media.peerconnection.ice.loopback to true and " +
  "media.peerconnection.ice.obfuscate_host_addresses to false, or use a Chromium-based " +
  "browser, or serve on this machine's network address (--host with --cert and --key).";

function unreachable() {
  return FIREFOX_LOCALHOST ? FIREFOX_LOCALHOST_HINT : UNREACHABLE;
}

// The microphone went away mid-session (unplugged, or its permission withdrawn).
function micEnded() {
  stop();
  showError("The microphone stopped (unplugged, or access to it was withdrawn). " +
    "Start again to use the microphone the browser now offers.");
}

// Thrown inside start() when Stop (or a newer Start) replaced the connection being set up.
const ABANDONED = new Error("abandoned");

// Start a session speaking from the microphone, or from `file` (an audio File) if given.
async function start(file = null) {
  showError("");
  setRunning(true);
  view.connection = "starting";
  render();
  const audio = TEST
    ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
    : true;
  const c = { startedAt: performance.now(), firstFrameMs: null, remote: new MediaStream() };
  conn = c;
  const current = () => { if (conn !== c) throw ABANDONED; };  // checked after every await
  try {
    if (file) {
      c.file = await decodeSpeech(file);
      current();
    } else {
      if (!navigator.mediaDevices) {
        throw new Error("The browser allows the microphone only on https or localhost: start " +
          "the server with --cert and --key, or use Speak a file.");
      }
      c.mic = await navigator.mediaDevices.getUserMedia({ audio });
      current();
      c.mic.getAudioTracks()[0].addEventListener("ended", () => {
        if (conn === c && !view.speaking) micEnded();  // else when the file ends
      });
    }
    const rtc = await (await fetch("/rtc-config")).json();  // the server's --ice-server list
    current();
    c.pc = new RTCPeerConnection({ iceServers: rtc.iceServers || [] });
    c.pc.ontrack = (e) => {
      c.remote.addTrack(e.track);
      if (conn === c) ui.video.srcObject = c.remote;
    };
    c.pc.onconnectionstatechange = () => {
      if (conn !== c) return;
      view.connection = c.pc.connectionState;
      render();
      if (c.pc.connectionState === "connected") {
        c.connected = true;
      } else if (c.pc.connectionState === "failed") {
        stop();
        showError(c.connected ? "The connection to the server was lost (network or firewall)."
          : unreachable());
      } else if (c.pc.connectionState === "closed") {
        stop();
      }
    };
    const source = c.file ? c.file.stream : c.mic;
    c.sender = c.pc.addTrack(source.getAudioTracks()[0], source);
    c.pc.addTransceiver("video", { direction: "recvonly" });
    c.channel = c.pc.createDataChannel("events");
    c.channel.onmessage = (e) => { if (conn === c) onEvent(JSON.parse(e.data)); };
    c.channel.onclose = () => {  // the server closed the session (we close it only in stop)
      if (conn !== c) return;
      stop();
      showError(`The server ended the session${c.failure ? `: ${c.failure}` : ""}.`);
    };
    await c.pc.setLocalDescription(await c.pc.createOffer());
    await iceGathered(c.pc);
    current();
    const resp = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        sdp: c.pc.localDescription.sdp, type: c.pc.localDescription.type, avatar: ui.avatar.value,
        motion: motionValues(),
      }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    const answer = await resp.json();
    current();
    await c.pc.setRemoteDescription(answer);
    setTimeout(() => {  // the server gives up then too; some browsers would wait longer
      if (conn === c && !c.connected) {
        stop();
        showError(unreachable());
      }
    }, CONNECT_TIMEOUT_MS);
    ui.video.requestVideoFrameCallback(() => {
      c.firstFrameMs = performance.now() - c.startedAt;
      // The server takes audio once the session runs, which its first frame shows.
      if (c.file && conn === c) playSpeech(c, c.file);
    });
  } catch (err) {
    if (conn !== c) {  // abandoned: release what was opened after stop() ran
      release(c);
      return;
    }
    showError(err.name === "NotAllowedError" ? "microphone permission denied" : err.message);
    stop();
  }
}

// Closes everything a connection opened; safe to call again as more of it opens.
function release(c) {
  if (c.channel && c.channel.readyState === "open") c.channel.send('{"type":"bye"}');
  if (c.pc) c.pc.close();
  if (c.mic) c.mic.getTracks().forEach((t) => t.stop());
  if (c.file) c.file.close();
}

// -- speaking a file: decoded in the page and sent as the connection's audio ---------------
// A file as a live audio track: {stream, seconds, start(onEnded), close()}.
const MAX_SPEECH_FILE = 200e6; // bytes: a file is decoded whole in the page's memory

async function decodeSpeech(file) {
  if (file.size > MAX_SPEECH_FILE) {
    throw new Error(`${file.name} is larger than ${MAX_SPEECH_FILE / 1e6} MB; use a shorter file.`);
  }
  const ctx = new AudioContext();
  let buffer;
  try {
    buffer = await ctx.decodeAudioData(await file.arrayBuffer());
  } catch {
    ctx.close();
    throw new Error(`${file.name} is not an audio file this browser can decode.`);
  }
  const dest = ctx.createMediaStreamDestination();
  let node = null;
  return {
    stream: dest.stream,
    seconds: buffer.duration,
    name: file.name,
    async start(onEnded) {
      await ctx.resume();
      node = ctx.createBufferSource();
      node.buffer = buffer;
      node.connect(dest);
      node.onended = onEnded;
      node.start();
    },
    close() {
      if (node) node.onended = null;
      ctx.close();
    },
  };
}

// Play `speech` into the connection; afterwards the microphone (if any) takes over again.
function playSpeech(c, speech) {
  view.speaking = `speaking ${speech.name} (${speech.seconds.toFixed(1)} s)`;
  render();
  speech.start(() => {
    if (conn !== c) return;
    if (c.file !== speech) return;  // a newer file took over
    if (c.mic) {
      const track = c.mic.getAudioTracks()[0];
      if (track.readyState === "ended") {
        micEnded();
        return;
      }
      c.sender.replaceTrack(track);
    }
    view.speaking = "";
    render();
  });
}

// "Speak a file…": starts a session on the file, or, during one, speaks it in place of the
// microphone until it ends.
async function speakFile(file) {
  if (!conn) {
    await start(file);
    return;
  }
  const c = conn;
  if (!c.sender) {
    showError("The session is still starting: choose the file again once the avatar moves.");
    return;
  }
  let speech;
  try {
    speech = await decodeSpeech(file);
  } catch (err) {
    showError(err.message);
    return;
  }
  if (conn !== c) {
    speech.close();
    return;
  }
  if (c.file) c.file.close();  // a file still playing gives way to the new one
  c.file = speech;
  await c.sender.replaceTrack(speech.stream.getAudioTracks()[0]);
  playSpeech(c, speech);
}

function stop() {
  const c = conn;
  conn = null;
  stopRecording();  // the recording so far stays downloadable
  if (c) release(c);
  ui.video.srcObject = null;
  Object.assign(view, {
    connection: "idle", state: "", fps: null, latency: null, speech: false, speaking: "",
  });
  setRunning(false);
  render();
}

function setRunning(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.mute.disabled = !running;
  ui.record.disabled = !running || typeof MediaRecorder === "undefined";
  ui.avatar.disabled = running;
}

// -- recording: what the avatar says and shows, as the browser received it ------------------
let recorder = null; // {media: MediaRecorder, chunks, startedAt}

function recordingType() {
  const types = ["video/webm;codecs=vp8,opus", "video/webm", "video/mp4"];
  return types.find((t) => MediaRecorder.isTypeSupported(t)) || "";
}

function startRecording() {
  if (!conn || recorder) return;
  if (!conn.remote.getVideoTracks().length) {
    showError("Nothing to record yet: wait for the avatar to appear.");
    return;
  }
  const type = recordingType();
  let media;
  try {
    media = new MediaRecorder(conn.remote, type ? { mimeType: type } : {});
  } catch (err) {
    showError(`This browser cannot record the stream: ${err.message}`);
    return;
  }
  const r = { media, chunks: [], startedAt: performance.now() };
  media.ondataavailable = (e) => { if (e.data.size) r.chunks.push(e.data); };
  media.onstop = () => {
    const blob = new Blob(r.chunks, { type: media.mimeType || type || "video/webm" });
    const seconds = (performance.now() - r.startedAt) / 1000;
    if (ui.download.href) URL.revokeObjectURL(ui.download.href);
    ui.download.href = URL.createObjectURL(blob);
    const ext = blob.type.includes("mp4") ? "mp4" : "webm";
    ui.download.download = `avatar-${new Date().toISOString().replace(/[:.]/g, "-")}.${ext}`;
    ui.download.textContent = `Download the recording (${seconds.toFixed(1)} s, ` +
      `${(blob.size / 1e6).toFixed(1)} MB)`;
    ui.recording.hidden = false;
  };
  media.start(1000); // a chunk a second: a long recording is not held in one piece
  recorder = r;
  ui.record.textContent = "Stop recording";
  ui.record.setAttribute("aria-pressed", "true");
}

function stopRecording() {
  if (!recorder) return;
  if (recorder.media.state !== "inactive") recorder.media.stop();
  recorder = null;
  ui.record.textContent = "Record";
  ui.record.setAttribute("aria-pressed", "false");
}

function toggleMute() {
  ui.video.muted = !ui.video.muted;
  ui.mute.textContent = ui.video.muted ? "Unmute" : "Mute";
  ui.mute.setAttribute("aria-pressed", String(ui.video.muted));
}

// -- test mode ------------------------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(predicate, timeoutMs) {
  const end = performance.now() + timeoutMs;
  while (!predicate() && performance.now() < end) await sleep(50);
  return predicate();
}

async function measure(c, seconds) {
  // Per presented frame: mouth-box darkness and frame-to-frame change, received audio RMS.
  const info = await (await fetch(`/avatars/${encodeURIComponent(ui.avatar.value)}`)).json();
  await until(() => c.remote.getAudioTracks().length && ui.video.videoWidth, 20000);
  const scale = ui.video.videoWidth / info.size;
  const [x0, y0, x1, y1] = info.mouth_box.map((v) => Math.round(v * scale));
  const w = x1 - x0, h = y1 - y0;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  const actx = new AudioContext();
  await Promise.race([actx.resume(), sleep(1000)]);  // never resolves without an audio device
  const analyser = actx.createAnalyser();
  analyser.fftSize = 1024; // ~21 ms at 48 kHz
  actx.createMediaStreamSource(new MediaStream(c.remote.getAudioTracks())).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const frames = [];
  // The received audio as played out: Chrome reports, per source, the RTP timestamp of the
  // packet last handed to the audio output and its RFC 6464 level. Polled faster than packets
  // arrive (20 ms), it gives every packet's level; with the report's time it places the audio
  // playing at each frame's display time. (An AnalyserNode hears the track through Web Audio's
  // own buffering, tens of ms late, so its RMS is kept only as a second figure.)
  const audioReceiver = c.pc.getReceivers().find((r) => r.track && r.track.kind === "audio");
  const levels = new Map();
  const latestSource = () => {
    const s = audioReceiver ? audioReceiver.getSynchronizationSources()[0] : null;
    if (s) levels.set(s.rtpTimestamp, s.audioLevel);
    return s;
  };
  const poll = setInterval(latestSource, 5);
  let prev = null, running = true;
  const onFrame = (now, meta) => {
    g.drawImage(ui.video, x0, y0, w, h, 0, 0, w, h);
    const px = g.getImageData(0, 0, w, h).data;
    const luma = new Float32Array(w * h);
    let sum = 0, diff = 0;
    for (let i = 0; i < luma.length; i++) {
      luma[i] = 0.299 * px[4 * i] + 0.587 * px[4 * i + 1] + 0.114 * px[4 * i + 2];
      sum += luma[i];
      if (prev) diff += Math.abs(luma[i] - prev[i]);
    }
    prev = luma;
    analyser.getFloatTimeDomainData(buf);
    let sq = 0;
    for (const v of buf) sq += v * v;
    const src = latestSource();
    // Audio RTP timestamp (48 kHz) playing when this frame is expected on screen.
    const shown = performance.timeOrigin + meta.expectedDisplayTime;
    const audioRtp = src ? src.rtpTimestamp + Math.round((shown - src.timestamp) * 48) : null;
    frames.push({
      now, media_time: meta.mediaTime, rtp: meta.rtpTimestamp, presented: meta.presentedFrames,
      shown: meta.expectedDisplayTime, audio_rtp: audioRtp,
      dark: 255 - sum / luma.length, diff: diff / luma.length, rms: Math.sqrt(sq / buf.length),
    });
    if (running) ui.video.requestVideoFrameCallback(onFrame);
  };
  ui.video.requestVideoFrameCallback(onFrame);
  await sleep(seconds * 1000);
  running = false;
  clearInterval(poll);
  const inbound = {};
  (await c.pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp") inbound[s.kind] = s; });
  return {
    frames, audio_levels: [...levels.entries()], mouth_box: info.mouth_box,
    video_size: [ui.video.videoWidth, ui.video.videoHeight],
    frames_decoded: inbound.video ? inbound.video.framesDecoded : 0,
    frames_dropped: inbound.video ? inbound.video.framesDropped : 0,
    audio_samples_received: inbound.audio ? inbound.audio.totalSamplesReceived : 0,
    ice_state: c.pc.iceConnectionState, connection_state: c.pc.connectionState,
    first_frame_ms: c.firstFrameMs, output_latency_s: actx.outputLatency || 0,
    base_latency_s: actx.baseLatency || 0, status: ui.status.textContent,
  };
}

// A path on this server ("/x"; not "//host/x" or "/\host/x": browsers read both as another origin).
const ownPath = (value) => (value && /^\/(?![/\\])/.test(value) ? value : null);

async function testRun() {
  const seconds = Number(params.get("seconds") || 10);
  const reportPath = ownPath(params.get("report"));
  let report;
  try {
    await start();
    if (!conn) throw new Error(ui.error.textContent || "start failed");
    report = await measure(conn, seconds);
  } catch (err) {
    report = { error: String(err && err.message ? err.message : err) };
  }
  stop();
  window.mmgtReport = report;
  if (reportPath) {
    await fetch(reportPath, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(report),
    });
  }
}

ui.start.addEventListener("click", () => start());
ui.speechFile.addEventListener("change", () => {
  const file = ui.speechFile.files[0];
  ui.speechFile.value = "";  // the same file may be chosen again
  if (file) speakFile(file);
});
ui.stop.addEventListener("click", stop);
ui.mute.addEventListener("click", toggleMute);
ui.record.addEventListener("click", () => (recorder ? stopRecording() : startRecording()));
ui.avatar.addEventListener("change", showAvatar);
ui.photo.addEventListener("change", () => ui.photo.files[0] && uploadPhoto(ui.photo.files[0]));
for (const el of ui.motion) {
  el.addEventListener("input", () => motionChanged({ [el.dataset.motion]: Number(el.value) }));
}
ui.motionReset.addEventListener("click", () => {
  for (const el of ui.motion) el.value = 1;
  motionChanged(motionValues());
});
loadMotion();
loadAvatars().catch(() => {}).finally(() => {
  if (params.get("avatar")) ui.avatar.value = params.get("avatar");
  showAvatar().catch(() => {});
  document.body.dataset.ready = "1"; // the avatar list is loaded (for automation)
  if (TEST) testRun();
});
render();
