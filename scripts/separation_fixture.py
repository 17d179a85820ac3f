"""Write ``tests/fixtures/official/separation.npz``: audio-separator's MDX path on a stand-in.

Manual, not part of the test suite. It runs ``audio-separator`` 0.17.2's ``MDXSeparator`` (the
separator the official MMGT pipeline uses, with Kim_Vocal_2's parameters and the package's
defaults) on the seeded stand-in ONNX file of ``tests/standin_models.py`` and records the
separated source (``demix``) and the vocals file it writes. The package is read from a folder
the caller names; nothing of it is copied::

    python scripts/separation_fixture.py --package /path/to/site --libs /path/to/libs

``--package`` holds ``audio_separator/`` (the unpacked 0.17.2 wheel); ``--libs`` the few
dependencies this project does not install (``pydub``, ``audioread``, ``six``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "official" / "separation.npz"
# Kim_Vocal_2 in audio-separator's model table (looked up there by the model file's hash).
KIM_VOCAL_2 = {"compensate": 1.009, "mdx_dim_f_set": 3072, "mdx_dim_t_set": 8,
               "mdx_n_fft_scale_set": 7680, "primary_stem": "Vocals"}  # fmt: skip
# audio-separator 0.17.2's defaults (Separator.__init__).
MDX_DEFAULTS = {"hop_length": 1024, "segment_size": 256, "overlap": 0.25, "batch_size": 1,
                "enable_denoise": False}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, required=True)
    ap.add_argument("--libs", type=Path, required=True)
    args = ap.parse_args()
    sys.path[:0] = [str(args.package), str(args.libs), str(ROOT)]

    import torch

    # onnx2torch (which needs torchvision) is only used when the segment size differs from the
    # model's; at the defaults the ONNX file runs in ONNX Runtime, so an empty module will do.
    sys.modules["onnx2torch"] = types.ModuleType("onnx2torch")
    from audio_separator.separator.architectures.mdx_separator import MDXSeparator

    from tests.standin_models import separation_mix, separator_model

    mix = separation_mix()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "Kim_Vocal_2.onnx"
        model_path.write_bytes(separator_model().SerializeToString())
        wav = Path(tmp) / "mix.wav"
        sf.write(wav, mix.T, 44100, subtype="FLOAT")
        config = {
            "logger": logging.getLogger("separation"), "log_level": logging.WARNING,
            "torch_device": torch.device("cpu"), "torch_device_cpu": torch.device("cpu"),
            "torch_device_mps": None, "onnx_execution_provider": ["CPUExecutionProvider"],
            "model_name": "Kim_Vocal_2", "model_path": str(model_path), "model_data": KIM_VOCAL_2,
            "output_dir": tmp, "output_format": "WAV", "normalization_threshold": 0.9,
            "enable_denoise": False, "output_single_stem": "vocals", "invert_using_spec": False,
            "sample_rate": 44100,
        }  # fmt: skip
        from audio_separator.separator.uvr_lib_v5 import spec_utils

        separator = MDXSeparator(config, MDX_DEFAULTS)
        loaded = separator.prepare_mix(str(wav))
        assert np.array_equal(loaded, mix)  # a float WAV at 44.1 kHz loads unchanged
        source = separator.demix(spec_utils.normalize(loaded.copy(), 0.9))  # as separate() does
        (vocals_file,) = separator.separate(str(wav))
        vocals, rate = sf.read(Path(tmp) / vocals_file, dtype="int16")
    assert rate == 44100 and np.abs(mix).max() > 0.9
    idx = sample_indices(mix.shape[1])
    np.savez_compressed(OUT, index=idx, source=source[:, idx].astype(np.float32),
                        vocals_int16=vocals.T[:, idx])  # fmt: skip
    print("wrote", OUT, source.shape, vocals.shape, idx.size)


def sample_indices(n: int) -> np.ndarray:
    """Every 97th sample, plus 400 samples around each chunk seam and at both ends."""
    from mmgt.audio.separation import CHUNK, OVERLAP, TRIM

    step = int((1 - OVERLAP) * CHUNK)
    seams = [s - TRIM for s in range(step, n + CHUNK, step)] + [
        s + CHUNK - TRIM for s in range(0, n, step)
    ]
    idx = [np.arange(0, n, 97), np.arange(400), np.arange(n - 400, n)]
    idx += [np.arange(s - 200, s + 200) for s in seams]
    idx = np.unique(np.concatenate(idx))
    return idx[(idx >= 0) & (idx < n)]


if __name__ == "__main__":
    main()
