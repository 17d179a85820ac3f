"""Drivers: audio features + reference pose → keypoint sequences (the ``Driver`` protocol)."""

from __future__ import annotations

from mmgt.drivers.procedural import ProceduralConfig, ProceduralDriver
from mmgt.types import Driver

DRIVERS = ("procedural",)


def make_driver(name: str, *, seed: int = 0) -> Driver:
    """Build a driver by name (see :data:`DRIVERS`)."""
    if name == "procedural":
        return ProceduralDriver(ProceduralConfig(seed=seed))
    raise ValueError(f"unknown driver {name!r}; choose one of {', '.join(DRIVERS)}")


__all__ = ["DRIVERS", "ProceduralConfig", "ProceduralDriver", "make_driver"]
