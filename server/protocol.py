"""Websocket protocol 1 (docs/protocol.md): the binary frame header and the JSON form of
engine events. Shared by the server's transports and the Python client; imports nothing heavy.
"""

from __future__ import annotations

import struct

from engine.frames import Interrupted, Mark, SegmentEnd, StateEvent, VadEvent

PROTOCOL = 1
KIND_VIDEO_JPEG = 1
KIND_AUDIO_PCM16 = 2
KIND_FMP4 = 3  # a piece of the fragmented MP4 stream (pts: its first frame, index: its last)
HEADER = struct.Struct("<BxxxqI")  # kind, pts (video: frame index; audio: sample), frame index


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
            return {"type": "error", "code": "bad_audio", "message": item.detail, "fatal": False}
        return {
            "type": "state",
            "state": item.state,
            "level": item.level,
            "detail": item.detail,
            "frame": item.index,
        }
    raise TypeError(f"unexpected item {type(item).__name__}")
