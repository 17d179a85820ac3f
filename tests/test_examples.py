"""The examples run as documented."""

from __future__ import annotations

import runpy
from pathlib import Path

import av

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_session_api_example(tmp_path, capsys):
    """examples/session_api.py: speech through a Session in chunks with marks, two segments
    and a motion change, written to an mp4 with a frame per 40 ms of speech and the audio."""
    main = runpy.run_path(str(EXAMPLES / "session_api.py"))["main"]
    out = tmp_path / "session.mp4"
    assert main(["--out", str(out), "--driver", "procedural"]) == 0
    printed = capsys.readouterr().out
    assert "449 video, 17 marks, 2 segments" in printed, printed
    with av.open(str(out)) as container:
        assert {s.type for s in container.streams} == {"video", "audio"}
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 449  # 17.96 s of speech at 25 fps
