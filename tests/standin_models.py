"""Stand-ins for released ONNX files (DWPose, Kim_Vocal_2), built in code with seeded weights.

They have the released files' input and output signatures (YOLOX-L: ``images`` (1, 3, 640, 640)
→ (1, 8400, 85); RTMPose-L 384: ``input`` (1, 3, 384, 288) → ``simcc_x`` (1, 133, 576) and
``simcc_y`` (1, 133, 768)), and outputs that depend on where things are in the image, so the
letterbox, the crop, the colour order and the decoding all show in the results. The golden
outputs of the official DWPose code on these models are in
``tests/fixtures/official/dwpose.npz`` (``scripts/dwpose_fixture.py``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

OPSET = 17
STRIDES = (8, 16, 32)
ROOT = Path(__file__).resolve().parents[1]


def _init(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def detector_model(seed: int = 0) -> onnx.ModelProto:
    """YOLOX-shaped: per stride, the mean colour of each cell → 85 values (xywh, obj, 80 cls).

    Objectness and class scores pass a sigmoid (as in the exported YOLOX); the objectness logit
    rises with the cell's brightness, so bright regions are "persons" and a dark image has none.
    """
    rng = np.random.default_rng(seed)
    nodes, inits, parts = [], [], []
    for s in STRIDES:
        w = rng.normal(0.0, 0.004, (85, 3, 1, 1)).astype(np.float32)
        b = rng.normal(0.0, 0.3, 85).astype(np.float32)
        w[4] = 0.02  # objectness: brightness, only on the coarsest level
        b[4] = -12.0 if s == 32 else -30.0  # … so that only near-white cells are "persons"
        w[5] = rng.normal(0.006, 0.002, (3, 1, 1))  # class 0 (person) follows brightness too
        b[2:4] += np.log(200.0 / s)  # boxes about 200 px wide and high
        inits += [_init(f"w{s}", w), _init(f"b{s}", b), _init(f"shape{s}", np.array([1, 85, -1]))]
        nodes += [
            helper.make_node(
                "AveragePool", ["images"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]
            ),
            helper.make_node("Conv", [f"p{s}", f"w{s}", f"b{s}"], [f"c{s}"]),
            helper.make_node("Reshape", [f"c{s}", f"shape{s}"], [f"r{s}"]),
        ]
        parts.append(f"r{s}")
    inits.append(_init("split", np.array([4, 81], dtype=np.int64)))
    nodes += [
        helper.make_node("Concat", parts, ["cat"], axis=2),
        helper.make_node("Transpose", ["cat"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Split", ["t", "split"], ["box", "logits"], axis=2),
        helper.make_node("Sigmoid", ["logits"], ["prob"]),
        helper.make_node("Concat", ["box", "prob"], ["output"], axis=2),
    ]
    graph = helper.make_graph(
        nodes,
        "yolox_standin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 85])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def pose_model(seed: int = 1) -> onnx.ModelProto:
    """RTMPose-shaped: a random 1×1 colour mix per keypoint, its column and row means → SimCC.

    Each keypoint's x (y) distribution is its mix averaged over the rows (columns) of the crop,
    upsampled 2× (SimCC split ratio 2); the argmax lands where that mix is strongest.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0, (133, 3, 1, 1)).astype(np.float32)
    b = rng.normal(0.0, 0.2, 133).astype(np.float32)
    inits = [
        _init("w", w),
        _init("b", b),
        _init("scales", np.array([1.0, 1.0, 2.0], dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["mix"]),
        helper.make_node("ReduceMean", ["mix"], ["cols"], axes=[2], keepdims=0),
        helper.make_node("ReduceMean", ["mix"], ["rows"], axes=[3], keepdims=0),
        helper.make_node("Resize", ["cols", "", "scales"], ["simcc_x"], mode="linear"),
        helper.make_node("Resize", ["rows", "", "scales"], ["simcc_y"], mode="linear"),
    ]
    graph = helper.make_graph(
        nodes,
        "rtmpose_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 384, 288])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 576]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, 768]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def write_models(folder: Path) -> str:
    """Write ``folder/DWPose/{yolox_l,dw-ll_ucoco_384}.onnx``; returns a hash of both files."""
    out = folder / "DWPose"
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name, model in (("yolox_l.onnx", detector_model()), ("dw-ll_ucoco_384.onnx", pose_model())):
        data = model.SerializeToString()
        (out / name).write_bytes(data)
        digest.update(data)
    return digest.hexdigest()


def fixture_images() -> dict[str, np.ndarray]:
    """RGB images of the fixture: square, tall (resized to 512 × 576), small (upscaled), dark."""
    astronaut = np.asarray(Image.open(ROOT / "mmgt" / "assets" / "astronaut.png").convert("RGB"))
    tall = np.asarray(Image.open(ROOT / "tests" / "data" / "grace_hopper.jpg").convert("RGB"))
    small = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.BILINEAR))
    dark = np.full((320, 320, 3), 20, np.uint8)  # nobody found: the whole image is the box
    return {"astronaut": astronaut, "tall": tall, "small": small, "dark": dark}


def separator_model(seed: int = 2) -> onnx.ModelProto:
    """Kim_Vocal_2-shaped (MDX-Net): ``input`` (1, 4, 3072, 256) → the same shape; a random 1×1
    mix of the four spectrogram channels, squashed to a soft mask that multiplies the input."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.5, (4, 4, 1, 1)).astype(np.float32)
    b = rng.normal(0.0, 0.5, 4).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["mix"]),
        helper.make_node("Sigmoid", ["mix"], ["mask"]),
        helper.make_node("Mul", ["input", "mask"], ["output"]),
    ]
    shape = [1, 4, 3072, 256]
    graph = helper.make_graph(
        nodes,
        "mdx_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        [_init("w", w), _init("b", b)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def separation_mix(seconds: float = 8.0) -> np.ndarray:
    """(2, N) float32 at 44.1 kHz: the bundled speech sample over a chord, peak 0.95."""
    import soundfile as sf
    import soxr

    speech, rate = sf.read(ROOT / "mmgt" / "assets" / "speech_sample.wav", dtype="float32")
    speech = soxr.resample(speech[: int(seconds * rate)], rate, 44100, quality="HQ")
    t = np.arange(speech.size) / 44100
    chord = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    left, right = speech + chord, 0.8 * speech + 0.5 * chord
    mix = np.stack([left, right]).astype(np.float32)
    return mix * np.float32(0.95 / np.abs(mix).max())


def identity_separator() -> onnx.ModelProto:
    """A Kim_Vocal_2-shaped model that passes the spectrogram through unchanged."""
    shape = [1, 4, 3072, 256]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "mdx_identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
