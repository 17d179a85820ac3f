"""Renderers: reference image + keypoint frames (+ masks, audio) → RGB frames."""

from __future__ import annotations

from mmgt.renderers.warp import WarpConfig, WarpRenderer
from mmgt.types import Renderer

RENDERERS = ("warp",)


def make_renderer(name: str) -> Renderer:
    """Build a renderer by name (see :data:`RENDERERS`)."""
    if name == "warp":
        return WarpRenderer()
    raise ValueError(f"unknown renderer {name!r}; choose one of {', '.join(RENDERERS)}")


__all__ = ["RENDERERS", "WarpConfig", "WarpRenderer", "make_renderer"]
