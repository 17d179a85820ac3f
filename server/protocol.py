"""Websocket protocol 1 (docs/protocol.md): the binary frame header and the JSON form of
engine events. Shared by the server's transports and the Python client; imports nothing heavy.
"""

from __future__ import annotations

import json
import struct

from engine.frames import Interrupted, Mark, SegmentEnd, StateEvent, VadEvent

PROTOCOL = 1
KIND_VIDEO_JPEG = 1
KIND_AUDIO_PCM16 = 2
KIND_FMP4 = 3  # a piece of the fragmented MP4 stream (pts: its first frame, index: its last)
HEADER = struct.Struct("<BxxxqI")  # kind, pts (video: frame index; audio: sample), frame index


def parse_json(text: str | bytes) -> object:
    """A client's JSON text; any text that cannot be read is a ``ValueError`` with a short
    reason: malformed JSON, but also nesting too deep for the parser (``[[[…]]]``) and integers
    over Python's 4300-digit conversion limit, which ``json.loads`` raises as other errors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"message is not JSON: {exc.msg}") from None
    except RecursionError:
        raise ValueError("message is not JSON we accept: nested too deeply") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string …"
        raise ValueError(f"message is not JSON we accept: {exc}") from None


def event_json(item: object, fps: int) -> dict:
    """The JSON event for an engine event (vad, segment_end, mark, interrupted, state, error)."""
    if isinstance(item, VadEvent):
        return {"type": "vad", "speech": item.speech, "frame": item.index, "t": item.index / fps}
    if isinstance(item, SegmentEnd):
        return {"type": "segment_end", "segment": item.segment, "frame": item.index}
    if isinstance(item, Mark):
        return {"type": "mark", "name": item.name, "frame": item.index, "t": round(item.t, 4)}
    if isinstance(item, Interrupted):
        return {
            "type": "interrupted",
            "played_frames": item.played_frames,
            "played_s": item.played_s,
            "dropped_frames": item.dropped_frames,
            "dropped_audio_s": round(item.dropped_audio_s, 4),
        }
    if isinstance(item, StateEvent):
        if item.state == "error":
            code = item.code or "bad_audio"
            return {"type": "error", "code": code, "message": item.detail, "fatal": False}
        return {
            "type": "state",
            "state": item.state,
            "level": item.level,
            "detail": item.detail,
            "frame": item.index,
        }
    raise TypeError(f"unexpected item {type(item).__name__}")
