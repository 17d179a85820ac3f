"""The websocket API's fragmented-MP4 stream played by real browsers through Media Source
Extensions: headless Chromium and headless Firefox open the websocket, speak a synthetic
signal, append every piece they receive to a ``SourceBuffer`` and play the result; the page
reports back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from aiohttp import web

from server.app import CTX, make_app
from server.settings import ServerSettings
from tests.bidi import FIREFOX, firefox_page
from tests.devtools import browser_process, report_route, serve
from tests.test_browser import CHROMIUM, chromium_command

SIZE = 256
SECONDS = 3

PAGE = """<!doctype html><html><body><video id="v" muted playsinline></video><script>
const report = (r) => fetch("/report", {method: "POST", body: JSON.stringify(r)});
const type = 'video/mp4; codecs="avc1.64000d, mp4a.40.2"';
const out = {supported: MediaSource.isTypeSupported(type), pieces: 0, errors: []};
const video = document.getElementById("v");
const ms = new MediaSource();
video.src = URL.createObjectURL(ms);
ms.addEventListener("sourceopen", () => {
  const sb = ms.addSourceBuffer(type);
  const queue = [];
  let done = false;
  const pump = () => {
    if (sb.updating) return;
    if (queue.length) { sb.appendBuffer(queue.shift()); return; }
    if (done && ms.readyState === "open") ms.endOfStream();
  };
  sb.addEventListener("updateend", pump);
  sb.addEventListener("error", () => out.errors.push("sourcebuffer error"));
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({type: "start", protocol: 1, sample_rate: 16000,
                                            format: "fmp4", pace: "asap"}));
  ws.onmessage = (e) => {
    if (typeof e.data === "string") {
      const m = JSON.parse(e.data);
      if (m.type === "ready") {
        const n = 16000 * %SECONDS%, pcm = new Int16Array(n);
        for (let i = 0; i < n; i++) {  // 3 Hz bursts of a 220 Hz tone
          const on = Math.sin(2 * Math.PI * 3 * i / 16000) > 0;
          pcm[i] = on ? 8000 * Math.sin(2 * Math.PI * 220 * i / 16000) : 0;
        }
        for (let i = 0; i < n; i += 320) ws.send(pcm.slice(i, i + 320).buffer);
        ws.send(JSON.stringify({type: "finish"}));
      } else if (m.type === "error") out.errors.push(m.code + ": " + m.message);
      else if (m.type === "done") { out.frames = m.frames; done = true; pump(); }
      return;
    }
    out.pieces += 1;
    queue.push(new Uint8Array(e.data, 16));  // after the 16-byte header
    pump();
  };
  ws.onerror = () => out.errors.push("websocket error");
});
video.addEventListener("ended", finish);
video.addEventListener("error", () => {
  out.errors.push("video error " + video.error.code);
  finish();
});
ms.addEventListener("sourceended", () => video.play().catch((e) => out.errors.push(String(e))));
setTimeout(finish, 30000);
let sent = false;
function finish() {
  if (sent) return; sent = true;
  const b = video.buffered;
  out.buffered_end = b.length ? b.end(b.length - 1) : 0;
  out.buffered_ranges = b.length;
  out.ranges = [...Array(b.length).keys()].map((i) => [b.start(i), b.end(i)]);
  out.current_time = video.currentTime;
  out.width = video.videoWidth; out.height = video.videoHeight;
  const q = video.getVideoPlaybackQuality();
  out.decoded_frames = q.totalVideoFrames; out.dropped_frames = q.droppedVideoFrames;
  out.audio_tracks = video.audioTracks ? video.audioTracks.length : null;
  report(out);
}
</script></body></html>""".replace("%SECONDS%", str(SECONDS))

pytestmark = [pytest.mark.slow, pytest.mark.realtime]


async def run_page(tmp_path: Path, browser: str) -> dict:
    app = make_app(ServerSettings(port=0, driver="procedural", frame_size=SIZE))
    got = report_route(app)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/mse.html", page)
    async with contextlib.AsyncExitStack() as stack:
        if browser == "firefox":
            await stack.enter_async_context(
                firefox_page(app, tmp_path / "profile", path="/mse.html")
            )
        else:  # the page makes its own audio; no microphone is used
            base = await stack.enter_async_context(serve(app))
            silence = tmp_path / "silence.wav"
            command = chromium_command(f"{base}/mse.html", silence, tmp_path / "profile")
            await stack.enter_async_context(browser_process(command))
        result = await asyncio.wait_for(got, 90)
        for _ in range(100):
            if app[CTX].admission.active == 0:
                break
            await asyncio.sleep(0.1)
        result["admission_after"] = app[CTX].admission.active
        return result


@pytest.mark.parametrize(
    "browser",
    [
        pytest.param("chromium", marks=pytest.mark.skipif(not CHROMIUM.exists(),
                                                          reason="needs /usr/bin/chromium")),
        pytest.param("firefox", marks=pytest.mark.skipif(FIREFOX is None,
                                                         reason="needs firefox-esr")),
    ],
)  # fmt: skip
def test_fmp4_stream_plays_through_media_source_extensions(tmp_path: Path, browser: str) -> None:
    report = asyncio.run(run_page(tmp_path, browser))
    print("mse report:", report)
    assert report["supported"], report
    assert not report["errors"], report
    assert report["frames"] == 25 * SECONDS and report["pieces"] >= report["frames"] // 2, report
    assert report["buffered_ranges"] == 1, report  # one gapless range
    assert abs(report["buffered_end"] - SECONDS) < 0.15, report
    assert (report["width"], report["height"]) == (SIZE, SIZE), report
    assert report["decoded_frames"] >= 25 * SECONDS - 5, report
    assert report["current_time"] > SECONDS - 0.5, report  # played to the end
    assert report["admission_after"] == 0
