"""The page's photo upload in headless Chromium, driven over the DevTools protocol: the photo
is chosen in the real file input, prepared by the server and offered as "My photo" with the
server's note about it (a face in profile); the server
lists only the bundled avatar to everyone, this browser remembers its own upload across a
reload, and a browser without that memory is not offered it."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.app import make_app
from server.settings import ServerSettings
from tests.devtools import CHROMIUM, OPTIONS, READY, browser_page

PHOTO = Path(__file__).parent / "data" / "camera.png"  # in profile: the page shows a note

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (setup.sh --dev)"),
]


# The stage's poster (the chosen avatar as the video frames it), once it has loaded.
POSTER_SHOWN = (
    "(v => { const img = new Image(); img.src = v.poster; return img.complete && "
    "img.naturalWidth === 128 && new URL(v.poster).pathname; })(document.getElementById('video'))"
)


async def test_uploaded_photo_is_offered_to_its_browser_only(tmp_path: Path) -> None:
    app = make_app(ServerSettings(port=0, driver="procedural", frame_size=128))
    async with browser_page(app, tmp_path / "profile") as b:
        page, http, base = b.page, b.http, b.base
        assert await page.wait_for(f"{READY} && {OPTIONS}") == [["default", "Bundled avatar"]]
        assert await page.wait_for(POSTER_SHOWN) == "/avatars/default/image"  # once it loads
        root = (await page.call("DOM.getDocument"))["root"]["nodeId"]
        node = await page.call("DOM.querySelector", nodeId=root, selector="#photo")
        await page.call("DOM.setFileInputFiles", files=[str(PHOTO)], nodeId=node["nodeId"])
        options = await page.wait_for(f"{OPTIONS}.length === 2 && {OPTIONS}")
        (public, _), (upload, label) = options
        assert public == "default" and label.startswith("My photo")
        assert await page.eval("document.getElementById('avatar').value") == upload
        assert await page.eval("document.getElementById('error').hidden") is True
        notes = await page.wait_for("!document.getElementById('notes').hidden && "
                                    "document.getElementById('notes').textContent")  # fmt: skip
        assert notes.startswith("About this photo: the face is turned about")
        assert await page.wait_for(POSTER_SHOWN) == f"/avatars/{upload}/image"  # the new photo
        # The server lists only the bundled avatar; the upload works by its id.
        async with http.get(f"{base}/avatars") as resp:
            assert (await resp.json())["avatars"] == ["default"]
        async with http.get(f"{base}/avatars/{upload}") as resp:
            assert resp.status == 200
        # This browser remembers its upload across a reload …
        await page.reload()
        again = await page.wait_for(f"{READY} && {OPTIONS}")
        assert [value for value, _ in again] == ["default", upload]
        assert await page.eval("document.getElementById('notes').hidden") is True  # the default
        await page.eval(f"(s => {{ s.value = '{upload}'; s.dispatchEvent(new Event('change')); }})"
                        "(document.getElementById('avatar'))")  # fmt: skip
        assert (await page.wait_for("document.getElementById('notes').textContent")) == notes
        # … and a browser without that memory is offered the bundled avatar only.
        await page.reload(before="localStorage.clear()")
        fresh = await page.wait_for(f"{READY} && {OPTIONS}")
        assert [value for value, _ in fresh] == ["default"]
