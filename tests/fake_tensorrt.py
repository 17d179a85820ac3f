"""A recording stand-in for the parts of ``tensorrt`` that ``export.trt`` uses (builder side).

Not TensorRT: nothing is compiled and no GPU is touched. ``make_fake_tensorrt()`` returns a
module object whose calls are appended to ``module.calls`` as tuples, so a contract test can
check what the builder asks TensorRT to do. The parser really reads the ONNX file (with the
``onnx`` package) and reports its real input names and shapes (``-1`` for dynamic dims), so a
profile that names the wrong inputs fails here as it would on TensorRT.
``build_serialized_network`` returns bytes derived from the recorded network and config.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from types import ModuleType


class BuilderFlag(enum.Enum):
    FP16 = "FP16"
    BF16 = "BF16"
    INT8 = "INT8"
    FP8 = "FP8"
    STRICT_TYPES = "STRICT_TYPES"


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0  # deprecated and ignored in TensorRT 10
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.Enum):
    WORKSPACE = "WORKSPACE"


class DataType(enum.Enum):
    FLOAT, HALF, BF16, INT8, UINT8, INT32, INT64, BOOL, FP8 = range(9)


_ONNX_DTYPES = {1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16, 3: DataType.INT8,
                2: DataType.UINT8, 6: DataType.INT32, 7: DataType.INT64,
                9: DataType.BOOL}  # fmt: skip


@dataclass
class FakeTensor:
    name: str
    shape: tuple[int, ...]
    dtype: DataType


@dataclass
class FakeParserError:
    message: str
    index: int

    def desc(self) -> str:
        return self.message

    def code(self) -> str:
        return "UNSUPPORTED_NODE"

    def node(self) -> int:
        return self.index

    def node_name(self) -> str:
        return f"/node_{self.index}"


def make_fake_tensorrt(version: str = "10.3.0", *, parser_errors: tuple[str, ...] = (),
                       build_fails: bool = False) -> ModuleType:  # fmt: skip
    """A fresh fake ``tensorrt`` module; its calls are recorded in ``module.calls``."""
    calls: list[tuple] = []

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = range(4)

        def __init__(self, severity: int = 2) -> None:
            calls.append(("Logger", severity))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            calls.append(("serialize_timing_cache", self.data))
            return self.data

    @dataclass
    class Profile:
        shapes: dict = field(default_factory=dict)

        def set_shape(self, name: str, lo, opt, hi) -> None:  # noqa: ANN001 - shapes
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self) -> None:
            self.flags, self.profiles, self.pools, self.cache = set(), [], {}, None

        def set_flag(self, flag: BuilderFlag) -> None:
            calls.append(("set_flag", flag))
            self.flags.add(flag)

        def get_flag(self, flag: BuilderFlag) -> bool:
            return flag in self.flags

        def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))
            self.pools[pool] = size

        def add_optimization_profile(self, profile: Profile) -> int:
            calls.append(("add_optimization_profile", dict(profile.shapes)))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs = flags, []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> FakeTensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            import onnx

            calls.append(("parse_from_file", path))
            model = onnx.load(path)  # also reads external data, as TensorRT's parser does
            if parser_errors:
                self.errors = [FakeParserError(m, i) for i, m in enumerate(parser_errors)]
                return False
            initializers = {t.name for t in model.graph.initializer}
            for value in model.graph.input:
                if value.name in initializers:
                    continue
                kind = value.type.tensor_type
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                             for d in kind.shape.dim)  # fmt: skip
                self.network.inputs.append(FakeTensor(value.name, dims,
                                                      _ONNX_DTYPES[kind.elem_type]))  # fmt: skip
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> FakeParserError:
            return self.errors[i]

    class Builder:
        def __init__(self, logger: Logger) -> None:
            calls.append(("Builder",))

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            names = [t.name for t in network.inputs]
            calls.append(("build_serialized_network", names))
            if build_fails:
                return None
            config.cache = TimingCache(config.cache.data + f"timed:{','.join(names)};".encode())
            desc = {"inputs": [[t.name, t.shape] for t in network.inputs],
                    "flags": sorted(f.value for f in config.flags),
                    "profiles": [{k: list(v) for k, v in p.shapes.items()}
                                 for p in config.profiles]}  # fmt: skip
            return b"FAKEPLAN" + hashlib.sha256(json.dumps(desc).encode()).digest()

    module = ModuleType("tensorrt", "Fake TensorRT (tests/fake_tensorrt.py): records calls.")
    module.__version__ = version
    module.calls = calls
    for obj in (Logger, Builder, OnnxParser, BuilderFlag, NetworkDefinitionCreationFlag,
                MemoryPoolType, DataType):  # fmt: skip
        setattr(module, obj.__name__, obj)
    return module
