"""Audio front-end: decoding/resampling to 16 kHz mono and the light streaming feature.

* :mod:`mmgt.audio.decode`: :func:`load_audio`, :func:`load_audio_native`, :func:`pcm16_to_float`,
  :class:`StreamingResampler`, :func:`write_wav`.
* :mod:`mmgt.audio.features`: :func:`extract_light_features` and :class:`LightFeatureStream`
  ("light-v1", 43 values per 25 fps frame, 12 ms look-ahead).
* :mod:`mmgt.audio.official`: the official stage-1 features (WavLM ‖ EDGE), imported on demand.
"""

from mmgt.audio.decode import (
    SAMPLE_RATE,
    StreamingResampler,
    load_audio,
    load_audio_native,
    pcm16_to_float,
    write_wav,
)
from mmgt.audio.features import (
    FEATURE_DIM,
    FEATURE_NAMES,
    HOP,
    KIND,
    LOOKAHEAD_MS,
    LOOKAHEAD_SAMPLES,
    WINDOW,
    LightFeatureStream,
    extract_light_features,
    mel_filterbank,
)

__all__ = [
    "FEATURE_DIM",
    "FEATURE_NAMES",
    "HOP",
    "KIND",
    "LOOKAHEAD_MS",
    "LOOKAHEAD_SAMPLES",
    "SAMPLE_RATE",
    "WINDOW",
    "LightFeatureStream",
    "StreamingResampler",
    "extract_light_features",
    "load_audio",
    "load_audio_native",
    "mel_filterbank",
    "pcm16_to_float",
    "write_wav",
]
