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

from mmgt.train.corpus.augmentation import AugmentParams, augment
from mmgt.train.corpus.format import Clip, read_corpus
from mmgt.train.corpus.generate import generate_corpus
from mmgt.train.corpus.poses import random_reference, reference_poses, validate_reference

__all__ = [
    "AugmentParams",
    "Clip",
    "add_cli",
    "augment",
    "generate_corpus",
    "prepare_video",
    "random_reference",
    "read_corpus",
    "reference_poses",
    "run_cli",
    "validate_reference",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy: video pulls in OpenCV, cli is run with -m
    if name == "prepare_video":
        from mmgt.train.corpus.video import prepare_video  # noqa: PLC0415

        return prepare_video
    if name in ("add_cli", "run_cli"):
        from mmgt.train.corpus import cli  # noqa: PLC0415

        return getattr(cli, name)
    raise AttributeError(name)
