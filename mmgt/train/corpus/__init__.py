"""The synthetic speech–motion corpus that SMGA is trained on (and the format real data uses).

Speech comes from TTS engines run as separate processes (espeak-ng, flite, optionally piper);
phone timings from pocketsphinx forced alignment; ground-truth motion from phone-accurate lip
curves and prosody-driven head, hand, lid and breathing curves rendered through
:mod:`mmgt.drivers.rig`. See ``docs/corpus.md``.

Public API:

* :func:`generate_corpus` — write/resume a corpus folder (parallel, atomic, logged skips);
* :func:`read_corpus`, :class:`Clip` (``Clip.load() -> (audio16k, keypoints, reference)``);
* :func:`prepare_video` — add a real talking-person video in the same format;
* :func:`augment`, :class:`AugmentParams` and the single effects in :mod:`.augmentation`;
* :func:`random_reference`, :func:`reference_poses`, :func:`validate_reference`;
* :func:`add_cli`, :func:`run_cli` — ``mmgt data corpus`` / ``mmgt data extract``.
"""

import importlib

# Public name → the submodule that defines it. Imported on first use: the command line declares
# ``mmgt data`` through this package, and the audio effects alone import scipy.signal (~1 s).
_EXPORTS = {
    "AugmentParams": "augmentation",
    "augment": "augmentation",
    "Clip": "format",
    "read_corpus": "format",
    "generate_corpus": "generate",
    "prepare_video": "video",
    "random_reference": "poses",
    "reference_poses": "poses",
    "validate_reference": "poses",
    "add_cli": "cli",
    "run_cli": "cli",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 lazy attributes
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
