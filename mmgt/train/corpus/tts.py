"""Text-to-speech engines, each run as a separate command-line process (nothing is linked).

* **espeak-ng** (``/usr/bin/espeak-ng``): English accents × voice variants (``en-gb-x-rp+m3``);
  rate in words per minute (``-s``), pitch 0–99 (``-p``). MBROLA voices (non-free) are never used.
* **flite**: ``kal``, ``kal16``, ``awb``, ``rms``, ``slt``; rate is a speed factor (``1 /
  duration_stretch``), pitch an f0 factor (``f0_shift``; ``rms`` ignores it).
* **piper** (optional, never installed by this project): used when ``MMGT_PIPER_MODEL`` names
  one or more ``.onnx`` voices (``os.pathsep``-separated) and a ``piper`` command exists on the
  PATH (or ``MMGT_PIPER_CMD``, e.g. ``/opt/piper/bin/python -m piper``). Rate = 1/length_scale.

Whole voices are held out for the test split (:data:`HELD_OUT`): the Caribbean accent, five
espeak variants and the flite ``rms`` voice never appear in train or val.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mmgt.errors import MMGTError

ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
    "en-029",
)
# espeak-ng variants ("" = the accent's default voice) that sound human enough and align well.
ESPEAK_VARIANTS = [""] + (
    "m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 klatt klatt2 klatt3 klatt4 klatt5 Alex Andrea Andy "
    "Denis Gene Hugo Jacky Lee Mario Michael Mike Nguyen adam antonio aunty belinda benjamin "
    "david ed edward grandma grandpa iven linda max michel paul quincy rob robert sandro steph "
    "travis victor whisperf"
).split()
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
HELD_OUT = {
    "espeak-ng": {"accents": {"en-029"}, "variants": {"f4", "m6", "klatt4", "Andrea", "Hugo"}},
    "flite": {"voices": {"rms"}},
    "piper": {"voices": set()},
}
ENGINES = ("espeak-ng", "flite", "piper")
TIMEOUT_S = 60.0


class TTSError(MMGTError):
    """A TTS engine failed or is missing."""


@dataclass(frozen=True)
class Voice:
    """One voice of one engine; ``name`` is what the manifest records."""

    engine: str
    name: str

    @property
    def held_out(self) -> bool:
        rule = HELD_OUT.get(self.engine, {})
        if self.engine == "espeak-ng":
            accent, _, variant = self.name.partition("+")
            return accent in rule["accents"] or variant in rule["variants"]
        return Path(self.name).stem in rule.get("voices", set())


def _piper_command() -> list[str] | None:
    cmd = os.environ.get("MMGT_PIPER_CMD")
    if cmd:
        return shlex.split(cmd)
    exe = shutil.which("piper")
    return [exe] if exe else None


def _piper_models() -> list[str]:
    spec = os.environ.get("MMGT_PIPER_MODEL", "")
    return sorted(p for p in spec.split(os.pathsep) if p and Path(p).is_file())


def available_engines() -> list[str]:
    """Engines usable on this machine."""
    found = []
    if shutil.which("espeak-ng"):
        found.append("espeak-ng")
    if shutil.which("flite"):
        found.append("flite")
    if _piper_command() and _piper_models():
        found.append("piper")
    return found


def voices(engine: str) -> list[Voice]:
    """Every voice of ``engine`` this generator may use (held-out ones included)."""
    if engine == "espeak-ng":
        return [
            Voice(engine, f"{a}+{v}" if v else a) for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS
        ]
    if engine == "flite":
        return [Voice(engine, v) for v in FLITE_VOICES]
    if engine == "piper":
        return [Voice(engine, m) for m in _piper_models()]
    raise ValueError(f"unknown TTS engine {engine!r}; known: {', '.join(ENGINES)}")


def sample_prosody(engine: str, rng) -> tuple[float, float | None]:  # noqa: ANN001 - Random
    """A random (rate, pitch) in the engine's own units (see the module docstring)."""
    if engine == "espeak-ng":
        return float(rng.randint(125, 215)), float(rng.randint(25, 75))
    if engine == "flite":
        return round(rng.uniform(0.8, 1.25), 3), round(rng.uniform(0.85, 1.2), 3)
    return round(rng.uniform(0.8, 1.25), 3), None


def _run(cmd: list[str], stdin: str | None = None) -> None:
    try:
        proc = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TTSError(f"{cmd[0]} could not run: {exc}") from exc
    if proc.returncode != 0:
        raise TTSError(f"{cmd[0]} exited with {proc.returncode}: {proc.stderr.strip()[:200]}")


def synthesize(voice: Voice, text: str, rate: float, pitch: float | None, out_wav: Path) -> None:
    """Speak ``text`` into ``out_wav`` (the engine's own sample rate); raises :class:`TTSError`."""
    out_wav = Path(out_wav)
    if voice.engine == "espeak-ng":
        voice_name = voice.name
        if voice_name.startswith("mb-") or "+mb-" in voice_name:
            raise TTSError("MBROLA voices are not allowed (non-free licences)")
        cmd = ["espeak-ng", "-v", voice_name, "-s", str(int(rate)), "-w", str(out_wav)]
        if pitch is not None:
            cmd += ["-p", str(int(pitch))]
        _run([*cmd, "--stdin"], stdin=text)
    elif voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / rate:.4f}"]
        if pitch is not None:
            cmd += ["--setf", f"f0_shift={pitch:.4f}"]
        _run([*cmd, "-t", text, "-o", str(out_wav)])
    elif voice.engine == "piper":
        base = _piper_command()
        if base is None:
            raise TTSError("piper is not available (no piper command, see MMGT_PIPER_CMD)")
        cmd = [*base, "--model", voice.name, "--output_file", str(out_wav)]
        _run([*cmd, "--length_scale", f"{1 / rate:.4f}"], stdin=text)
    else:
        raise TTSError(f"unknown TTS engine {voice.engine!r}")
    if not out_wav.is_file() or out_wav.stat().st_size <= 44:
        raise TTSError(f"{voice.engine} ({voice.name}) wrote no audio for {text[:40]!r}")
